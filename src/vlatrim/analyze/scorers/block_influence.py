"""Block influence (ShortGPT, Men et al. 2024): 1 - cos(block input, block output), averaged over the
real tokens of the calibration set (padding positions excluded by ``ScoringContext.real_positions``)."""

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
        owners = [bl for bl in lists for _ in bl.modules]  # block index -> its block list
        blocks = [b for bl in lists for b in bl.modules]
        total = torch.zeros(len(blocks), dtype=torch.float64)  # sum of 1 - cos over counted positions
        count = torch.zeros(len(blocks), dtype=torch.float64)  # positions counted
        masked: dict[str, bool] = {}
        batch = None

        def fn(i: int, h: torch.Tensor, o: torch.Tensor) -> None:
            d = 1 - F.cosine_similarity(h.float(), o.float(), dim=-1)  # (B, S): one value per position
            real = ctx.real_positions(batch, owners[i], h)  # (B, S) bool or None
            masked[owners[i].path] = real is not None
            if real is not None:
                d = d[real]
            total[i] += d.sum().double()
            count[i] += d.numel()

        with block_hooks(blocks, fn):
            for batch in ctx.iter_batches("block influence"):  # fn reads the current batch
                ctx.loss_value(batch)
        total /= count.clamp_min(1)
        scores, k = {}, 0
        for bl in lists:
            scores[bl.path] = total[k:k + len(bl)]
            k += len(bl)
        return ScoreResult(scores, {"padding_masked": masked})
