"""Linear CKA between each block's input and output representations; score = 1 - CKA.

Linear CKA (Kornblith et al. 2019) over all real (non-padding) positions of the calibration set, in feature space:
CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred X, Y (positions x D),
accumulated as sums and D x D products so the calibration set never has to be held at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.hooks import Boundaries


@SCORERS.register("cka")
@dataclass
class LinearCKA(Scorer):
    """1 - linear CKA(x_l, x_{l+1}) per block: how much the block changes the representation's geometry."""

    name = "cka"
    unit = "block"
    loss_units = False  # 1 - CKA, not a loss
    preference = 4

    @torch.no_grad()
    def score(self, ctx: ScoringContext) -> ScoreResult:
        scores, masked = {}, {}
        for bl in ctx.block_lists():
            N = len(bl)
            cap = Boundaries(bl.modules)
            n = 0
            sums: list[torch.Tensor] = []
            grams: list[torch.Tensor] = []  # x_l^T x_l, (D, D)
            cross: list[torch.Tensor] = []  # x_{l+1}^T x_l, (D, D)
            for batch in ctx.iter_batches(f"cka: {bl.path}"):
                with cap.attach():
                    ctx.loss_value(batch)
                real = ctx.real_positions(batch, bl, cap.states[0])  # (B, S) bool or None
                masked[bl.path] = real is not None
                # Rows are positions: the real ones only (padding would add rows of its own).
                xs = [(x[real] if real is not None else x.reshape(-1, x.shape[-1])).double() for x in cap.states]  # (P, D)
                if not sums:
                    D = xs[0].shape[-1]
                    sums = [torch.zeros(D, dtype=torch.float64) for _ in xs]
                    grams = [torch.zeros(D, D, dtype=torch.float64) for _ in xs]
                    cross = [torch.zeros(D, D, dtype=torch.float64) for _ in range(N)]
                n += xs[0].shape[0]
                for l, x in enumerate(xs):
                    sums[l] += x.sum(0)
                    grams[l] += x.T @ x
                for l in range(N):
                    cross[l] += xs[l + 1].T @ xs[l]
            mu = [s / n for s in sums]
            gc = [g - n * torch.outer(m, m) for g, m in zip(grams, mu)]  # centred Gram in feature space
            vals = []
            for l in range(N):
                cc = cross[l] - n * torch.outer(mu[l + 1], mu[l])
                denom = torch.linalg.matrix_norm(gc[l]) * torch.linalg.matrix_norm(gc[l + 1])
                vals.append(1.0 - (cc.square().sum() / denom.clamp_min(1e-30)).item())
            scores[bl.path] = torch.tensor(vals, dtype=torch.float64)
        return ScoreResult(scores, {"padding_masked": masked})
