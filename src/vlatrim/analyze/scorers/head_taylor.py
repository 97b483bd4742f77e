"""Attention heads by first-order Taylor: |d L / d head mask| (KV-group sums in extras)."""

from __future__ import annotations

from dataclasses import dataclass

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.width import head_units, kv_group_scores, taylor


@SCORERS.register("head_taylor")
@dataclass
class HeadTaylor(Scorer):
    """One score per query head of every backbone block; extras["kv_groups"] sums them per KV head."""

    name = "head_taylor"
    unit = "head"
    loss_units = True  # |dL/dmask|: first-order loss change of removing the head
    preference = 0

    def score(self, ctx: ScoringContext) -> ScoreResult:
        s = taylor(ctx, head_units(ctx), "head taylor")
        return ScoreResult(s, {"kv_groups": kv_group_scores(ctx, s)})
