"""Remove blocks given by index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vlatrim.prune.depth import check_drop
from vlatrim.prune.methods.base import PRUNE_METHODS, PlanContext, PruneMethod
from vlatrim.prune.plan import PrunePlan

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest


def drop_blocks(handle: Any, indices: Sequence[int]) -> PrunePlan:
    """Plan removing exactly the blocks ``indices`` (refuses out-of-range indices or all blocks)."""
    drop = check_drop(indices, handle.num_blocks, "--drop-blocks")
    return PrunePlan(drop_blocks=drop, methods=["drop-blocks"])


@PRUNE_METHODS.register("drop-blocks")
class DropBlocks(PruneMethod):
    """``--drop-blocks``: the blocks given by index."""

    name = "drop-blocks"
    stage = "depth"

    def applies(self, request: PruneRequest) -> bool:
        return request.drop_blocks is not None and request.pathway == "language"

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        return drop_blocks(handle, request.drop_blocks)
