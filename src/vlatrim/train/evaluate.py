"""Offline action error on held-out episodes: how far predicted chunks are from the demonstrations."""

from __future__ import annotations

from typing import Any

import torch

from vlatrim.train.data import ChunkDataset


@torch.no_grad()
def offline_action_error(model, dataset: ChunkDataset, batch_size: int = 256,
                         device: str | torch.device | None = None) -> dict[str, Any]:
    """L1 and MSE between predicted and demonstrated action chunks, in environment action units.

    Only chunk steps inside their episode count (the padding mask). Errors are averaged over samples
    and chunk steps, per action dimension and per chunk step.

    Args:
        model: a ``ReferenceVLA`` (anything with ``predict_from_batch``).
        dataset: held-out samples.
        batch_size: inference batch size.
        device: where to run (default: the model's device).

    Returns:
        ``{"l1", "mse", "l1_per_dim", "mse_per_dim", "l1_per_step", "samples", "episodes"}``.
    """
    device = device or next(model.parameters()).device
    abs_sum = sq_sum = step_abs = step_n = None
    n_valid = 0.0
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
        pred = model.predict_from_batch({k: v.to(device) for k, v in batch.items()})  # (B, T, A)
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
        "samples": len(dataset), "episodes": list(dataset.episodes),
        "units": "environment action units",
    }
