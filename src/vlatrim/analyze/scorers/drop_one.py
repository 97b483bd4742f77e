"""Drop-one: the measured loss increase when each block alone is removed (the ground truth)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.hooks import skip_blocks


@SCORERS.register("drop_one")
@dataclass
class DropOne(Scorer):
    """L(without block i) - L(full model) over the calibration batches, for every block of every selected
    pathway: N + 1 forward passes per batch. The reference the cheaper scorers are judged against."""

    name = "drop_one"
    unit = "block"
    loss_units = True  # measured loss increase: the reference
    preference = 0

    def score(self, ctx: ScoringContext) -> ScoreResult:
        base = ctx.mean_loss("drop-one: full model")
        scores = {}
        for bl in ctx.block_lists():
            vals = []
            for i in range(len(bl)):
                with skip_blocks(bl.modules, [i]):
                    vals.append(ctx.mean_loss(f"drop-one: {bl.path}.{i}") - base)
            scores[bl.path] = torch.tensor(vals, dtype=torch.float64)
        return ScoreResult(scores, {"base_loss": base})
