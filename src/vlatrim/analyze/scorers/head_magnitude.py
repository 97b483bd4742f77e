"""Attention heads by activation magnitude: mean norm of each head's contribution through o_proj."""

from __future__ import annotations

from dataclasses import dataclass

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.width import head_units, kv_group_scores, magnitude


@SCORERS.register("head_magnitude")
@dataclass
class HeadMagnitude(Scorer):
    """One score per query head of every backbone block; extras["kv_groups"] sums them per KV head."""

    name = "head_magnitude"
    unit = "head"
    loss_units = False  # an activation norm, not a loss
    preference = 1

    def score(self, ctx: ScoringContext) -> ScoreResult:
        s = magnitude(ctx, head_units(ctx), "head magnitude")
        return ScoreResult(s, {"kv_groups": kv_group_scores(ctx, s)})
