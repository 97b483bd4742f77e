"""Batching for the training loop: pass-through collation and a resumable shuffled batch sampler.

Samples come from ``vlatrim.data.frames`` (``DemoFrames``, ``ChunkDataset``), re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from vlatrim.data.frames import ChunkDataset, DemoFrames, read_demo_frames, split_episodes
from vlatrim.errors import VlatrimError

__all__ = ["ChunkDataset", "DemoFrames", "ResumableBatchSampler", "collate_batch", "read_demo_frames",
           "split_episodes"]


def collate_batch(batch: Any) -> Any:
    """The dataset already returns collated batches (``__getitems__``); pass them through."""
    return batch


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose order is a pure function of (seed, batch number).

    Epoch e is ``randperm(n)`` from a generator seeded with ``(seed, e)``, cut into ``n // B`` full
    batches; batch number b is batch ``b % per_epoch`` of epoch ``b // per_epoch``. Resuming at
    batch ``start`` therefore continues the exact data order without replaying anything.

    Args:
        n: dataset size.
        batch_size: B (must be <= n).
        seed: data-order seed.
        start: first batch number to yield.
        num_batches: how many batches to yield.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, num_batches: int) -> None:
        if batch_size > n:
            raise VlatrimError(f"batch size {batch_size} exceeds the {n} training samples; lower --batch-size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.num_batches = start, num_batches
        self.per_epoch = n // batch_size

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = -1, None
        for b in range(self.start, self.start + self.num_batches):
            e, k = divmod(b, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield perm[k * self.batch_size:(k + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return self.num_batches
