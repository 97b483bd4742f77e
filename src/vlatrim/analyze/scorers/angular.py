"""Angular distance between the residual stream before block l and after block l + n - 1 (spans of n).

d(l, n) = arccos(cos(x_l, x_{l+n})) / pi averaged over positions (Gromov et al., "The Unreasonable
Ineffectiveness of the Deeper Layers"): a small d means the n blocks from l on can go together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.hooks import Boundaries
from vlatrim.errors import VlatrimError


@SCORERS.register("angular")
@dataclass
class AngularDistance(Scorer):
    """Per-block score: d(l, span); extras["spans"][path][n-1][l] = d(l, n) for every n (the heatmap)."""

    span: int = 1
    """Span n whose distances are the per-block scores (block l scores the span starting at l)."""

    name = "angular"
    unit = "block"
    loss_units = False  # an angle / pi, not a loss
    preference = 3

    def __post_init__(self) -> None:
        if not isinstance(self.span, int) or self.span < 1:
            raise VlatrimError(f"angular span={self.span!r} must be a positive integer")

    @torch.no_grad()
    def score(self, ctx: ScoringContext) -> ScoreResult:
        scores, spans = {}, {}
        for bl in ctx.block_lists():
            N = len(bl)
            if self.span > N:
                raise VlatrimError(f"angular span={self.span} is longer than {bl.path} ({N} blocks)")
            acc = torch.zeros(N, N, dtype=torch.float64)  # acc[n-1, l] = d(l, n); zero where l + n > N
            cap = Boundaries(bl.modules)
            for batch in ctx.iter_batches(f"angular: {bl.path}"):
                with cap.attach():
                    ctx.loss_value(batch)
                xs = [x.float() for x in cap.states]  # N+1 tensors (..., D)
                for n in range(1, N + 1):
                    for l in range(0, N - n + 1):
                        cos = F.cosine_similarity(xs[l], xs[l + n], dim=-1).clamp(-1, 1)
                        acc[n - 1, l] += (torch.arccos(cos) / torch.pi).mean().double()
            acc /= len(ctx.batches)
            # Block l scores the span of `span` blocks that starts at it; blocks too late to start one
            # score the last full span that covers them.
            s = self.span
            scores[bl.path] = torch.stack([acc[s - 1, min(l, N - s)] for l in range(N)])
            spans[bl.path] = [[acc[n - 1, l].item() for l in range(N - n + 1)] for n in range(1, N + 1)]
        return ScoreResult(scores, {"spans": spans, "span": self.span})
