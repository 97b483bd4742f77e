"""Remove attention heads, uniformly or per block, by scores or by weight magnitude (GQA-aware)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vlatrim.errors import VlatrimError
from vlatrim.prune.gqa import HeadMode, select_heads
from vlatrim.prune.methods.base import PRUNE_METHODS, PlanContext, PruneMethod
from vlatrim.prune.methods.magnitude import head_magnitudes
from vlatrim.prune.plan import PrunePlan

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest


def per_block(value: int | float | Sequence[int | float], n: int, what: str) -> list:
    """A uniform value or one per block, as a list of ``n``."""
    if isinstance(value, (int, float)):
        return [value] * n
    value = list(value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise VlatrimError(f"{what}: {len(value)} values for {n} blocks; give one value or one per block")
    return value


def heads(handle: Any, keep: int | Sequence[int], scores: Mapping[int, Sequence[float]] | None = None,
          mode: HeadMode = "auto") -> PrunePlan:
    """Plan keeping ``keep`` query heads in every block (or ``keep[b]`` in block ``b``).

    Args:
        handle: the located backbone.
        keep: query heads to keep, uniform or per block.
        scores: per block, one importance score per query head (higher = keep); default: magnitude.
        mode: GQA rule (``"kv"`` whole groups, ``"query"`` evenly within groups, ``"auto"``); a count no
            rule can meet is refused with the nearest valid counts.
    """
    counts = per_block(keep, handle.num_blocks, "--heads")
    plan = {}
    for b, (k, lay) in enumerate(zip(counts, handle.layouts)):
        att = lay.attention
        if att is None:
            raise VlatrimError(f"--heads: block {b} has no attention layout vlatrim can cut")
        if int(k) != k or k < 1:
            raise VlatrimError(f"--heads {k} for block {b} leaves no heads; keep 1..{att.num_heads}")
        if k == att.num_heads:
            continue  # nothing to remove here
        s = scores.get(b, scores.get(str(b))) if scores is not None else None
        s = head_magnitudes(handle.blocks[b], att) if s is None else s
        plan[b] = select_heads(s, int(k), att.num_heads, att.num_kv_heads, mode, what=f"--heads for block {b}").tolist()
    return PrunePlan(heads=plan, methods=["heads"], notes={"heads_keep": counts, "head_mode": mode,
                                                           "head_scores": "analysis" if scores is not None else "magnitude"})


@PRUNE_METHODS.register("heads")
class Heads(PruneMethod):
    """``--heads``: query heads kept per block, ranked by the analysis's preferred head scorer when it has
    one, else by weight magnitude."""

    name = "heads"
    stage = "width"

    def applies(self, request: PruneRequest) -> bool:
        return request.heads is not None

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        hs = scores.head_scores(handle) if scores is not None and scores.has("head") else None  # else magnitude
        return heads(handle, request.heads, hs, request.head_mode)
