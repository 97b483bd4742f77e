"""MLP channels by activation magnitude: mean |a_c| times the norm of the down projection's column c."""

from __future__ import annotations

from dataclasses import dataclass

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.width import channel_units, magnitude


@SCORERS.register("channel_magnitude")
@dataclass
class ChannelMagnitude(Scorer):
    """One score per intermediate channel of every backbone block's MLP."""

    name = "channel_magnitude"
    unit = "channel"
    loss_units = False  # an activation norm, not a loss
    preference = 1

    def score(self, ctx: ScoringContext) -> ScoreResult:
        return ScoreResult(magnitude(ctx, channel_units(ctx), "channel magnitude"))
