"""Block influence: 1 - cos(block input, block output), averaged over positions (ShortGPT's metric)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.hooks import block_hooks


@SCORERS.register("block_influence")
@dataclass
class BlockInfluence(Scorer):
    """How much each block turns the residual stream: 1 - mean cosine(h_in, h_out). One forward pass."""

    name = "block_influence"
    unit = "block"
    loss_units = False  # a cosine distance, not a loss
    preference = 2

    @torch.no_grad()
    def score(self, ctx: ScoringContext) -> ScoreResult:
        lists = ctx.block_lists()
        blocks = [b for bl in lists for b in bl.modules]
        total = torch.zeros(len(blocks), dtype=torch.float64)

        def fn(i: int, h: torch.Tensor, o: torch.Tensor) -> None:
            # h, o: (..., D); cosine per position, averaged over all positions of the batch.
            total[i] += (1 - F.cosine_similarity(h.float(), o.float(), dim=-1)).mean().double()

        with block_hooks(blocks, fn):
            for batch in ctx.iter_batches("block influence"):
                ctx.loss_value(batch)
        total /= len(ctx.batches)
        scores, k = {}, 0
        for bl in lists:
            scores[bl.path] = total[k:k + len(bl)]
            k += len(bl)
        return ScoreResult(scores)
