"""Remove blocks given by index."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlatrim.prune.depth import check_drop
from vlatrim.prune.methods.base import PRUNE_METHODS
from vlatrim.prune.plan import PrunePlan


@PRUNE_METHODS.register("drop-blocks")
def drop_blocks(handle: Any, indices: Sequence[int]) -> PrunePlan:
    """Plan removing exactly the blocks ``indices`` (refuses out-of-range indices or all blocks)."""
    drop = check_drop(indices, handle.num_blocks, "--drop-blocks")
    return PrunePlan(drop_blocks=drop, methods=["drop-blocks"])
