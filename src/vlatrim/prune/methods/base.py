"""The registry of pruning selectors and the budget arithmetic they share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.prune.plan import PrunePlan
from vlatrim.registry import Registry

Selector = Callable[..., PrunePlan]
PRUNE_METHODS: Registry[Selector] = Registry("pruning method")


def check_ratio(ratio: float, what: str = "--ratio") -> float:
    """A removal fraction must lie in [0, 1): 0 removes nothing, 1 would remove everything."""
    if not (0.0 <= float(ratio) < 1.0):
        raise VlatrimError(f"{what} {ratio} is outside [0, 1); e.g. 0.5 removes half")
    return float(ratio)


def block_params(handle: Any) -> list[int]:
    """Parameters of each backbone block."""
    return [l.num_params for l in handle.layouts]
