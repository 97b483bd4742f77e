"""Keep the first k blocks (SmolVLA keeps the first 16 of SmolVLM2's text blocks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlatrim.errors import VlatrimError
from vlatrim.prune.methods.base import PRUNE_METHODS, PlanContext, PruneMethod
from vlatrim.prune.plan import PrunePlan

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest


def keep_first(handle: Any, k: int) -> PrunePlan:
    """Plan keeping blocks ``0..k-1`` and removing the rest."""
    n = handle.num_blocks
    if not 1 <= k <= n:
        raise VlatrimError(f"--keep-first {k} is out of range; valid: 1..{n}")
    return PrunePlan(drop_blocks=list(range(k, n)), methods=["keep-first"], notes={"keep_first": k})


@PRUNE_METHODS.register("keep-first")
class KeepFirst(PruneMethod):
    """``--keep-first K``: blocks 0..K-1 stay."""

    name = "keep-first"
    stage = "depth"

    def applies(self, request: PruneRequest) -> bool:
        return request.keep_first is not None

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        return keep_first(handle, request.keep_first)
