"""Remove the least important blocks by a scorer's ranking, to a count or a parameter budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from vlatrim.errors import VlatrimError
from vlatrim.prune.methods.base import (
    PRUNE_METHODS,
    PlanContext,
    PruneMethod,
    block_params,
    check_ratio,
    vocab_params_removed,
)
from vlatrim.prune.plan import PrunePlan
from vlatrim.prune.surgery import width_savings

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest


def blocks_for_budget(order: Sequence[int], sizes: Sequence[int], to_remove: int, n_blocks: int) -> list[int]:
    """The shortest prefix of ``order`` whose blocks hold at least ``to_remove`` parameters, keeping at
    least one block; refuses a budget that would need every block."""
    drop, removed = [], 0
    for b in order:
        if removed >= to_remove:
            break
        drop.append(b)
        removed += sizes[b]
    if removed < to_remove or len(drop) >= n_blocks:
        raise VlatrimError(
            f"the budget needs {to_remove} parameters removed but the blocks that can go hold only "
            f"{sum(sorted(sizes)[:-1])}; ask for less")
    return sorted(drop)


def by_scores(handle: Any, scores: Sequence[float], count: int | None = None, ratio: float | None = None,
              target_params: int | None = None, backbone_params: int | None = None, already_removed: int = 0,
              block_sizes: Sequence[int] | None = None) -> PrunePlan:
    """Plan removing the blocks with the LOWEST scores (higher = more important).

    Exactly one of ``count`` (blocks to remove), ``ratio`` (fraction of ``backbone_params`` to remove) or
    ``target_params`` (backbone size to reach) says how many.

    Args:
        handle: the located backbone.
        scores: one importance score per block.
        backbone_params: the backbone's parameter count (``params_by_component(h)["backbone"]``).
        already_removed: parameters other parts of the plan (vocabulary, width cuts) already remove.
        block_sizes: what removing each block still saves given those other cuts (default: its size).
    """
    n = handle.num_blocks
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    if s.numel() != n:
        raise VlatrimError(f"block scores: {s.numel()} scores for {n} blocks")
    order = torch.argsort(s, stable=True).tolist()  # least important first; ties keep the earlier block
    if sum(x is not None for x in (count, ratio, target_params)) != 1:
        raise VlatrimError("block scores: give exactly one of a count, --ratio or --target-params")
    if count is not None:
        if not 0 <= count < n:
            raise VlatrimError(f"block count {count} out of range; valid: 0..{n - 1}")
        drop = sorted(order[:count])
        notes = {"count": count}
    else:
        if backbone_params is None:
            raise ValueError("backbone_params is needed for a ratio or a target")
        if ratio is not None:
            to_remove = int(round(check_ratio(ratio) * backbone_params))
            notes = {"ratio": ratio}
        else:
            if not 0 < target_params <= backbone_params:
                raise VlatrimError(f"--target-params {target_params} is outside (0, {backbone_params}] (the backbone's size)")
            to_remove = backbone_params - int(target_params)
            notes = {"target_params": int(target_params)}
        sizes = list(block_sizes) if block_sizes is not None else block_params(handle)
        drop = blocks_for_budget(order, sizes, max(0, to_remove - already_removed), n)
        notes["params_to_remove"] = to_remove
    notes["block_scores"] = s.tolist()
    return PrunePlan(drop_blocks=drop, methods=["block-scores"], notes=notes)


@PRUNE_METHODS.register("block-scores")
class BlockScores(PruneMethod):
    """``--scores A`` with ``--count`` or a parameter budget (``--budget-units blocks``): whole blocks in the
    order of a block scorer (``--scorer``, default the analysis's preferred one), lowest first. A budget
    counts what the vocabulary and explicit width cuts already remove."""

    name = "block-scores"
    stage = "depth"

    def applies(self, request: PruneRequest) -> bool:
        return request.count is not None or (request.parameter_budget and request.budget_units == "blocks")

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        vocab_saving = vocab_params_removed(handle, context.plan, context.params_before)
        # Explicit head / channel cuts count towards the budget too; a block then saves only what its
        # cut-down self still holds.
        ws = width_savings(handle, context.plan)
        sizes = [lay.num_params - w for lay, w in zip(handle.layouts, ws)]
        name, block_scores = scores.block_scores(handle, request.scorer)
        out = by_scores(handle, block_scores, count=request.count, ratio=request.ratio,
                        target_params=request.target_params, backbone_params=context.params_before["backbone"],
                        already_removed=vocab_saving + sum(ws), block_sizes=sizes)
        out.notes["block_scorer"] = name
        out.notes["vocab_params_removed"] = vocab_saving
        out.notes["width_params_removed"] = sum(ws)
        return out
