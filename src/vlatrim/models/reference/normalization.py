"""Dataset statistics that map states and actions to and from the model's normalized units.

The statistics travel with the checkpoint as ``normalization.json`` (human-readable, exact: float32
values survive a JSON round trip), and live in the model as non-persistent buffers so they follow it
across devices without entering ``model.safetensors``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlatrim.errors import VlatrimError

STATE_KEY = "observation.state"
ACTION_KEY = "action"
_FIELDS = ("mean", "std", "min", "max")
_EPS = 1e-6  # floor on std / range, so a constant dimension (e.g. an unused gripper) stays finite


class Normalizer(nn.Module):
    """Normalizes one feature (dim ``n``) by ``mean_std`` or ``min_max`` (to [-1, 1]).

    Args:
        dim: feature size.
        mode: ``"mean_std"`` or ``"min_max"``.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        # Identity statistics until real ones are set (fresh model before training).
        self.register_buffer("mean", torch.zeros(dim), persistent=False)
        self.register_buffer("std", torch.ones(dim), persistent=False)
        self.register_buffer("min", -torch.ones(dim), persistent=False)
        self.register_buffer("max", torch.ones(dim), persistent=False)

    def set_stats(self, stats: dict[str, Any], what: str) -> None:
        """Copy ``{"mean", "std", "min", "max"}`` (lists of length dim) into the buffers."""
        for f in _FIELDS:
            if f not in stats:
                raise VlatrimError(f"normalization statistics of {what!r} lack {f!r}; need {', '.join(_FIELDS)}")
            value = torch.as_tensor(stats[f], dtype=torch.float32).flatten()
            buf = getattr(self, f)
            if value.shape != buf.shape:
                raise VlatrimError(
                    f"normalization statistic {what}.{f} has {value.numel()} values; the model expects {buf.numel()}")
            if not torch.isfinite(value).all():
                raise VlatrimError(f"normalization statistic {what}.{f} is not finite")
            buf.copy_(value)

    def stats(self) -> dict[str, list[float]]:
        return {f: getattr(self, f).detach().cpu().tolist() for f in _FIELDS}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean_std":
            return (x - self.mean) / self.std.clamp_min(_EPS)
        return 2.0 * (x - self.min) / (self.max - self.min).clamp_min(_EPS) - 1.0

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean_std":
            return x * self.std.clamp_min(_EPS) + self.mean
        return (x + 1.0) / 2.0 * (self.max - self.min).clamp_min(_EPS) + self.min
