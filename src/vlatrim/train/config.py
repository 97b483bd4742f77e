"""The training loop's settings (one dataclass, every field documented, validated on construction)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.utils.config import strict_from_dict

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainerConfig:
    """Optimisation, checkpointing and logging settings of ``Trainer``."""

    steps: int = 1000
    """Optimizer steps in the whole run (the cosine schedule spans them)."""
    batch_size: int = 32
    """Samples per optimizer step, summed over gradient-accumulation micro-batches and processes."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; each is ``batch_size / grad_accum`` samples (split over processes)."""
    lr: float = 3e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (not applied to biases, norms and 1-d parameters)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.999
    """AdamW second-moment decay."""
    warmup_steps: int = 50
    """Linear warm-up from 0 to ``lr`` over this many steps, then cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine decays to ``lr * min_lr_ratio`` at the last step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    checkpoint_every: int = 500
    """Write a resumable checkpoint every this many steps (and always at the last step)."""
    keep_checkpoints: int = 2
    """How many most recent checkpoints to keep (older ones are deleted)."""
    log_every: int = 10
    """Append the mean of the losses over this many steps to the JSONL log."""
    seed: int = 0
    """Seed of the data order and of torch's RNG (dropout) at the start of the run."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    mixed_precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``no``, ``bf16`` or ``fp16``. On a CPU with native bf16
    matmuls (AVX512-BF16 or AMX) ``bf16`` autocast is ~1.5x faster than fp32 for the quick preset; elsewhere
    it is emulated and slower (a warning says so)."""
    num_workers: int = 0
    """DataLoader worker processes (0: batches are gathered in the main process, fastest in memory)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise VlatrimError(f"training setting {name}={v!r} must be a positive integer")
        for name in ("warmup_steps", "num_workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise VlatrimError(f"training setting {name}={v!r} must be a non-negative integer")
        if self.batch_size % self.grad_accum:
            raise VlatrimError(f"batch size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if not self.lr > 0:
            raise VlatrimError(f"learning rate {self.lr!r} must be > 0")
        if self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1 or self.grad_clip < 0:
            raise VlatrimError("weight_decay and grad_clip must be >= 0 and min_lr_ratio in [0, 1]")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise VlatrimError(f"AdamW betas ({self.beta1}, {self.beta2}) must be in [0, 1)")
        if self.device not in DEVICES:
            raise VlatrimError(f"device {self.device!r} is not valid; valid: {', '.join(DEVICES)}")
        if self.mixed_precision not in PRECISIONS:
            raise VlatrimError(f"mixed_precision {self.mixed_precision!r} is not valid; valid: {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        return strict_from_dict(cls, data, "training setting")
