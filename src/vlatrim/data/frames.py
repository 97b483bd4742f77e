"""Behaviour-cloning samples from demonstration frames: (image, state, instruction, action chunk).

``DemoFrames`` holds a whole demonstration dataset in memory (decoded once: a few hundred MB at
96 px for the quick preset), so a training step gathers a batch with a few tensor indexing ops
instead of decoding images. ``ChunkDataset`` turns frames into samples whose target is the chunk of
the next T actions *within the same episode*; steps past the episode's end are padded with the last
action and masked out of the loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vlatrim.errors import VlatrimError


@dataclass
class DemoFrames:
    """All frames of a demonstration dataset, sorted by (episode, frame).

    Attributes:
        images: uint8 (N, H, W, 3) RGB.
        states: float32 (N, S) agent state.
        actions: float32 (N, A) actions.
        episode_index: int64 (N,).
        frame_index: int64 (N,) position within the episode.
        task_index: int64 (N,).
        instructions: task_index -> natural-language instruction.
    """

    images: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    task_index: np.ndarray
    instructions: dict[int, str]

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise VlatrimError("the dataset has no frames")
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise VlatrimError(f"dataset images have shape {self.images.shape} {self.images.dtype}; need uint8 (N, H, W, 3)")
        if self.images.shape[1] != self.images.shape[2]:
            raise VlatrimError(f"dataset images are {self.images.shape[2]}x{self.images.shape[1]} px; need square images")
        for name in ("states", "actions", "episode_index", "frame_index", "task_index"):
            if len(getattr(self, name)) != n:
                raise VlatrimError(f"dataset column {name} has {len(getattr(self, name))} rows; images have {n}")
        missing = sorted(set(np.unique(self.task_index).tolist()) - set(self.instructions))
        if missing:
            raise VlatrimError(f"dataset task_index {missing[:5]} have no instruction in meta/tasks")
        order = np.lexsort((self.frame_index, self.episode_index))
        if not np.array_equal(order, np.arange(n)):
            for name in ("images", "states", "actions", "episode_index", "frame_index", "task_index"):
                setattr(self, name, getattr(self, name)[order])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def episodes(self) -> np.ndarray:
        return np.unique(self.episode_index)

    def stats(self, episodes: Sequence[int] | None = None) -> dict[str, dict[str, list[float]]]:
        """Per-dimension mean/std/min/max of state and action over ``episodes`` (default: all)."""
        rows = slice(None) if episodes is None else np.isin(self.episode_index, np.asarray(episodes))
        out = {}
        for key, x in (("observation.state", self.states[rows]), ("action", self.actions[rows])):
            x = x.astype(np.float64)
            out[key] = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                        "min": x.min(0).tolist(), "max": x.max(0).tolist()}
        return out


def read_demo_frames(path: str | os.PathLike, image_key: str | None = None) -> DemoFrames:
    """Load a LeRobotDataset v3 directory (``vlatrim.data.lerobot``) into memory for training.

    Args:
        path: the dataset directory.
        image_key: which ``observation.images.<cam>`` to use (default: the reader's choice).

    Raises:
        VlatrimError: not a dataset, or a missing / mismatched feature (named by the reader).
    """
    from vlatrim.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(path, image_key=image_key)
    h, w, _ = ds.image_shape
    if h != w:
        raise VlatrimError(f"dataset {str(path)!r} images are {w}x{h} px; the reference VLA needs square images")
    return DemoFrames(images=ds.images(), states=ds.state, actions=ds.action,
                      episode_index=ds.episode_index.astype(np.int64), frame_index=ds.frame_index.astype(np.int64),
                      task_index=ds.task_index.astype(np.int64),
                      instructions={i: t for i, t in enumerate(ds.tasks) if t})


def split_episodes(frames: DemoFrames, val_fraction: float) -> tuple[list[int], list[int]]:
    """Hold out the last ``val_fraction`` of each task's episodes (at least one where a task has two).

    Deterministic (no RNG): the held-out episodes are the highest-indexed ones of each task.

    Returns:
        (train episode indices, held-out episode indices).
    """
    return _split(frames.episode_index, frames.task_index, val_fraction)


def _split(episode_index: np.ndarray, task_index: np.ndarray, val_fraction: float) -> tuple[list[int], list[int]]:
    if not 0.0 <= val_fraction < 1.0:
        raise VlatrimError(f"val_fraction={val_fraction} must be in [0, 1)")
    train, val = [], []
    ep, first = np.unique(episode_index, return_index=True)
    task_of_ep = task_index[first]
    for task in np.unique(task_of_ep):
        eps = sorted(ep[task_of_ep == task].tolist())
        k = int(round(val_fraction * len(eps)))
        if val_fraction > 0 and len(eps) >= 2:
            k = max(k, 1)
        k = min(k, len(eps) - 1)
        train += eps[: len(eps) - k]
        val += eps[len(eps) - k:]
    return sorted(train), sorted(val)


def training_samples(path: str | os.PathLike, val_fraction: float) -> int:
    """How many behaviour-cloning samples ``split_episodes`` leaves for training in a dataset: one per frame
    of the training episodes. Reads the dataset's columns only (no image is decoded), so verbs can check
    a batch size against it before they write anything.

    Raises:
        VlatrimError: not a dataset, or a damaged one (named by the reader).
    """
    from vlatrim.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(path)
    train, _ = _split(ds.episode_index, ds.task_index, val_fraction)
    return int(np.isin(ds.episode_index, np.asarray(train, dtype=ds.episode_index.dtype)).sum())


def check_batch_fits(path: str | os.PathLike, batch_size: int, grad_accum: int, val_fraction: float) -> None:
    """Refuse a batch (per gradient-accumulation step) larger than the training samples of ``path``."""
    n = training_samples(path, val_fraction)
    micro = batch_size // max(grad_accum, 1)
    if micro > n:
        per = f" / --grad-accum {grad_accum} = {micro}" if grad_accum > 1 else ""
        raise VlatrimError(f"--batch-size {batch_size}{per} exceeds the {n} training samples of --data {str(path)!r} "
                           f"(the frames of its training episodes; held-out episodes excluded); valid: "
                           f"1..{n * max(grad_accum, 1)}")


class ChunkDataset(Dataset):
    """Samples for behaviour cloning with action chunks.

    A sample at frame i of an episode ending at frame e (exclusive) has target actions
    ``actions[i : i + T]``; steps ``i + k >= e`` repeat the last action and have mask False.

    Args:
        frames: the demonstration frames.
        episodes: episode indices to draw samples from.
        chunk_size: T.
        tokenize: instructions -> (input_ids (n, L), attention_mask (n, L)); applied once per task.
    """

    def __init__(self, frames: DemoFrames, episodes: Sequence[int], chunk_size: int,
                 tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.frames = frames
        ep = frames.episode_index
        rows = np.nonzero(np.isin(ep, np.asarray(list(episodes), dtype=ep.dtype)))[0]
        if len(rows) == 0:
            raise VlatrimError(f"no frames for episodes {list(episodes)[:5]}")
        # Last row (exclusive) of each row's episode: frames are sorted, so searchsorted finds it.
        ends = np.searchsorted(ep, ep[rows], side="right")
        steps = rows[:, None] + np.arange(chunk_size)[None, :]  # (n, T)
        self.rows = torch.from_numpy(rows)
        self.chunk_rows = torch.from_numpy(np.minimum(steps, ends[:, None] - 1))  # (n, T)
        self.chunk_mask = torch.from_numpy(steps < ends[:, None])  # (n, T)
        self.images = torch.from_numpy(frames.images)
        self.states = torch.from_numpy(frames.states.astype(np.float32))
        self.actions = torch.from_numpy(frames.actions.astype(np.float32))
        tasks = sorted(frames.instructions)
        ids, mask = tokenize([frames.instructions[t] for t in tasks])
        lookup = np.zeros(max(tasks) + 1, dtype=np.int64)
        lookup[tasks] = np.arange(len(tasks))
        self.task_row = torch.from_numpy(lookup[frames.task_index])  # frame -> row of ids
        self.input_ids, self.text_mask = ids, mask
        self.episodes = sorted(int(e) for e in np.unique(ep[rows]))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        # The DataLoader hands the whole batch of indices at once: gather with tensor indexing.
        idx = torch.as_tensor(indices, dtype=torch.long)
        r = self.rows[idx]
        t = self.task_row[r]
        return {
            "image": self.images[r],  # (B, H, W, 3) uint8
            "state": self.states[r],  # (B, S)
            "input_ids": self.input_ids[t],  # (B, L)
            "attention_mask": self.text_mask[t],  # (B, L)
            "action": self.actions[self.chunk_rows[idx]],  # (B, T, A)
            "action_mask": self.chunk_mask[idx],  # (B, T)
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}
