"""MLP channels by first-order Taylor: |d L / d channel mask| at the down projection's input."""

from __future__ import annotations

from dataclasses import dataclass

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.width import channel_units, taylor


@SCORERS.register("channel_taylor")
@dataclass
class ChannelTaylor(Scorer):
    """One score per intermediate channel of every backbone block's MLP."""

    name = "channel_taylor"
    unit = "channel"
    loss_units = True  # |dL/dmask|: first-order loss change of removing the channel
    preference = 0

    def score(self, ctx: ScoringContext) -> ScoreResult:
        return ScoreResult(taylor(ctx, channel_units(ctx), "channel taylor"))
