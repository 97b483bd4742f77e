"""Offline action error on held-out episodes: how far predicted chunks are from the demonstrations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vlatrim.train.data import ChunkDataset


@torch.no_grad()
def offline_action_error(model, dataset: ChunkDataset, batch_size: int = 256,
                         device: str | torch.device | None = None,
                         predict: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None) -> dict[str, Any]:
    """L1 and MSE between predicted and demonstrated action chunks, in environment action units.

    Only chunk steps inside their episode count (the padding mask). Errors are averaged over samples
    and chunk steps, per action dimension and per chunk step.

    Args:
        model: a ``ReferenceVLA`` (anything with ``predict_from_batch``).
        dataset: held-out samples.
        batch_size: inference batch size.
        device: where to run (default: the model's device).
        predict: batch -> action chunks (B, T, A) in environment units on the CPU (default:
            ``model.predict_from_batch``; other families pass their ``predict_batch``).

    Returns:
        ``{"l1", "mse", "l1_per_dim", "mse_per_dim", "l1_per_step", "samples", "episodes"}``.
    """
    device = device or next(model.parameters()).device
    predict = predict or model.predict_from_batch
    abs_sum = sq_sum = step_abs = step_n = None
    n_valid = 0.0
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
        pred = predict({k: v.to(device) for k, v in batch.items()})  # (B, T, A)
        err = pred - batch["action"]
        m = batch["action_mask"].float().unsqueeze(-1)  # (B, T, 1)
        a, s = (err.abs() * m).sum((0, 1)), (err.square() * m).sum((0, 1))  # (A,)
        sa, sn = (err.abs() * m).sum((0, 2)), m.sum((0, 2)) * err.shape[-1]  # (T,)
        abs_sum = a if abs_sum is None else abs_sum + a
        sq_sum = s if sq_sum is None else sq_sum + s
        step_abs = sa if step_abs is None else step_abs + sa
        step_n = sn if step_n is None else step_n + sn
        n_valid += float(m.sum())
    l1_dim, mse_dim = abs_sum / n_valid, sq_sum / n_valid
    return {
        "l1": float(l1_dim.mean()), "mse": float(mse_dim.mean()),
        "l1_per_dim": l1_dim.tolist(), "mse_per_dim": mse_dim.tolist(),
        "l1_per_step": (step_abs / step_n.clamp_min(1)).tolist(),
        "samples": len(dataset), "episodes": list(getattr(dataset, "episodes", [])),
        "units": "environment action units",
    }


@torch.no_grad()
def image_swap_error(model, dataset: ChunkDataset, batch_size: int = 256,
                     device: str | torch.device | None = None) -> dict[str, Any] | None:
    """How much the model's actions depend on its camera: the held-out error with another scene's image.

    Each held-out sample is predicted twice: with its own image, and with the image at the same step
    of the next held-out episode of the same task (another start: other object and goal positions),
    keeping the state and the instruction. A policy that reads the scene gets worse with the wrong
    image; one that ignores the camera predicts the same chunk (``action_change`` ~ 0) and keeps its
    error. Tasks with fewer than two held-out episodes are left out.

    Returns:
        ``{"l1", "l1_other_image", "action_change", "samples", "tasks"}`` (L1 in environment action
        units over the valid chunk steps; ``action_change`` is the mean absolute difference between the
        two predictions), or None when no task has two held-out episodes.
    """
    device = device or next(model.parameters()).device
    keep, other_rows, n_tasks = swap_partners(dataset)
    if not len(keep):
        return None
    own_sum = other_sum = change_sum = 0.0
    n_valid = 0.0
    for b0 in range(0, len(keep), batch_size):
        batch = dataset.__getitems__(keep[b0:b0 + batch_size].tolist())
        batch = {k: v.to(device) for k, v in batch.items()}
        own = model.predict_from_batch(batch)  # (B, T, A) on the CPU
        other_img = dataset.images[torch.as_tensor(other_rows[b0:b0 + batch_size])].to(device)
        other = model.predict_from_batch(dict(batch, image=other_img))
        m = batch["action_mask"].float().unsqueeze(-1).cpu()  # (B, T, 1)
        target = batch["action"].cpu()
        own_sum += float(((own - target).abs() * m).sum())
        other_sum += float(((other - target).abs() * m).sum())
        change_sum += float(((own - other).abs() * m).sum())
        n_valid += float(m.sum()) * own.shape[-1]
    return {"l1": own_sum / n_valid, "l1_other_image": other_sum / n_valid, "action_change": change_sum / n_valid,
            "samples": int(len(keep)), "tasks": n_tasks}


def swap_partners(dataset: ChunkDataset) -> tuple[np.ndarray, np.ndarray, int]:
    """The image each held-out sample is paired with by ``image_swap_error``.

    Within each task the held-out episodes form a cycle (in index order); a sample at step k of an
    episode is paired with the frame at step k of the next episode (its last frame if shorter).

    Returns:
        (sample indices into ``dataset`` that have a partner, the partner's frame row for each, the
        number of tasks with at least two held-out episodes).
    """
    frames = dataset.frames
    ep = np.asarray(frames.episode_index)
    start = {e: int(np.searchsorted(ep, e, side="left")) for e in dataset.episodes}
    length = {e: int(np.searchsorted(ep, e, side="right")) - start[e] for e in dataset.episodes}
    by_task: dict[int, list[int]] = {}
    for e in dataset.episodes:
        by_task.setdefault(int(frames.task_index[start[e]]), []).append(e)
    partner = {e: eps[(k + 1) % len(eps)] for eps in by_task.values() if len(eps) > 1 for k, e in enumerate(eps)}
    keep, other = [], []
    for i, r in enumerate(dataset.rows.tolist()):
        e = int(ep[r])
        if e in partner:
            p = partner[e]
            keep.append(i)
            other.append(start[p] + min(r - start[e], length[p] - 1))
    n_tasks = sum(1 for eps in by_task.values() if len(eps) > 1)
    return np.asarray(keep, dtype=np.int64), np.asarray(other, dtype=np.int64), n_tasks
