"""The naive virtual-gate score, -dL/dg at g = 1 (first-order Taylor of removing the block).

Kept as its own scorer so reports show what GateProbe's second-order term adds over it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.scorers.gateprobe import gate_statistics


@SCORERS.register("gate_first_order")
@dataclass
class GateFirstOrder(Scorer):
    """-dL/dg_i at g = 1: the first-order estimate of removing block i."""

    name = "gate_first_order"
    unit = "block"
    # The first-order term alone sits near zero at a trained optimum (Spearman 0.09 with drop-one in
    # docs/analysis.md): not an estimate of the removal's loss increase to compare across units.
    loss_units = False
    preference = 5

    def score(self, ctx: ScoringContext) -> ScoreResult:
        G, _, loss = gate_statistics(ctx)
        return ScoreResult({p: -g for p, g in G.items()}, {"mean_loss": loss})
