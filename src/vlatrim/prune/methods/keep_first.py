"""Keep the first k blocks (SmolVLA keeps the first 16 of SmolVLM2's text blocks)."""

from __future__ import annotations

from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.prune.methods.base import PRUNE_METHODS
from vlatrim.prune.plan import PrunePlan


@PRUNE_METHODS.register("keep-first")
def keep_first(handle: Any, k: int) -> PrunePlan:
    """Plan keeping blocks ``0..k-1`` and removing the rest."""
    n = handle.num_blocks
    if not 1 <= k <= n:
        raise VlatrimError(f"--keep-first {k} is out of range; valid: 1..{n}")
    return PrunePlan(drop_blocks=list(range(k, n)), methods=["keep-first"], notes={"keep_first": k})
