"""Remove MLP channels, uniformly or per block, by scores or by weight magnitude."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from vlatrim.errors import VlatrimError
from vlatrim.prune.methods.base import PRUNE_METHODS, PlanContext, PruneMethod, check_ratio
from vlatrim.prune.methods.heads import per_block
from vlatrim.prune.methods.magnitude import channel_magnitudes
from vlatrim.prune.plan import PrunePlan

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest


def mlp(handle: Any, ratio: float | Sequence[float], scores: Mapping[int, Sequence[float]] | None = None) -> PrunePlan:
    """Plan removing the fraction ``ratio`` of MLP channels in every block (or ``ratio[b]`` in block b),
    lowest scores first.

    Args:
        handle: the located backbone.
        ratio: fraction of channels to remove, in [0, 1); uniform or per block.
        scores: per block, one importance score per channel (higher = keep); default: magnitude.
    """
    ratios = [check_ratio(r, "--mlp-ratio") for r in per_block(ratio, handle.num_blocks, "--mlp-ratio")]
    plan = {}
    for b, (r, lay) in enumerate(zip(ratios, handle.layouts)):
        I = lay.mlp.intermediate_size
        keep = I - int(round(r * I))
        if keep < 1:
            raise VlatrimError(f"--mlp-ratio {r} leaves block {b} with no MLP channels (of {I}); use a smaller ratio")
        if keep == I:
            continue
        s = scores.get(b, scores.get(str(b))) if scores is not None else None
        s = channel_magnitudes(handle.blocks[b], lay.mlp) if s is None else torch.as_tensor(s, dtype=torch.float64)
        if s.numel() != I:
            raise VlatrimError(f"MLP scores for block {b}: {s.numel()} values for {I} channels")
        plan[b] = torch.sort(torch.argsort(-s.double(), stable=True)[:keep]).values.tolist()
    return PrunePlan(mlp=plan, methods=["mlp"], notes={"mlp_ratio": ratios,
                                                       "mlp_scores": "analysis" if scores is not None else "magnitude"})


@PRUNE_METHODS.register("mlp")
class MLPChannels(PruneMethod):
    """``--mlp-ratio``: MLP channels removed per block, ranked by the analysis's preferred channel scorer
    when it has one, else by weight magnitude."""

    name = "mlp"
    stage = "width"

    def applies(self, request: PruneRequest) -> bool:
        return request.mlp_ratio is not None

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        cs = scores.channel_scores(handle) if scores is not None and scores.has("channel") else None  # else magnitude
        return mlp(handle, request.mlp_ratio, cs)
