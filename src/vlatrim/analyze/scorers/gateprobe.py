"""GateProbe: the loss change from removing each block, estimated from one forward/backward.

Every block's residual update u_i gets a virtual gate, h + g_i * u_i, at g_i = 1 (no change to the
model). Removing block i moves g_i from 1 to 0, so to second order

    dL_i = L(g_i = 0) - L(g_i = 1) ~ -dL/dg_i + 1/2 d2L/dg_i2.

The first term alone (the naive gate gradient) is near zero on a trained model: the loss sits at an
optimum in each gate, so it ranks blocks poorly (Spearman 0.090 against drop-one on the trained 24-block
model of benchmarks/bench_analyze.py, benchmarks/results/analyze.json). The
curvature is what a trained model's importance lives in. It comes from the same backward: the gates
are per sample (g_i has one entry per row of the batch), so the backward returns every sample's gate
gradient s_ib, and the empirical Fisher F_i = mean_b s_ib^2 estimates the curvature through the
loss's likelihood, d2L/dg_i2 ~ kappa * F_i (kappa from ``LossSpec.curvature_scale``). An exactly
inert block (u_i = 0) gets exactly 0 in both terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.hooks import RowGates, frozen


def gate_statistics(ctx: ScoringContext) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """One forward/backward per calibration batch with per-row gates on every selected block.

    Returns:
        (G, F, mean loss): G[path] (N,) the mean total gate gradient dL/dg_i; F[path] (N,) the mean over
        rows of the squared per-sample gradient s_ib = rows * dL/dg_ib (valid because the loss is the mean
        of per-sample losses).
    """
    lists = ctx.block_lists()
    blocks = [b for bl in lists for b in bl.modules]
    gates = RowGates(blocks)
    G = torch.zeros(len(blocks), dtype=torch.float64)
    F = torch.zeros(len(blocks), dtype=torch.float64)
    total = 0.0
    with frozen(ctx.model):
        for batch in ctx.iter_batches("gate probe"):
            with gates.attach():
                loss = ctx.loss_value(batch)
                idx = [i for i, g in enumerate(gates.gates) if g is not None]
                grads = torch.autograd.grad(loss, [gates.gates[i] for i in idx], allow_unused=True)
            for i, g in zip(idx, grads):
                if g is None:  # a block whose output does not reach the loss
                    continue
                g = g.detach().double()  # (rows,)
                G[i] += g.sum()
                F[i] += (g * g.shape[0]).square().mean()
            total += float(loss.detach())
    n = len(ctx.batches)
    G, F = G / n, F / n
    out_g, out_f, k = {}, {}, 0
    for bl in lists:
        out_g[bl.path], out_f[bl.path] = G[k:k + len(bl)], F[k:k + len(bl)]
        k += len(bl)
    return out_g, out_f, total / n


@SCORERS.register("gateprobe")
@dataclass
class GateProbe(Scorer):
    """Second-order gate estimate of each block's drop-one loss increase: -dL/dg + kappa/2 * Fisher."""

    name = "gateprobe"
    unit = "block"
    loss_units = True  # second-order estimate of drop-one's loss increase
    preference = 1

    def score(self, ctx: ScoringContext) -> ScoreResult:
        G, F, loss = gate_statistics(ctx)
        kappa = ctx.loss.curvature_scale(loss)
        scores = {p: -G[p] + 0.5 * kappa * F[p] for p in G}
        extras = {"mean_loss": loss, "kappa": kappa, "first_order": {p: (-G[p]).tolist() for p in G},
                  "second_order": {p: (0.5 * kappa * F[p]).tolist() for p in G}}
        return ScoreResult(scores, extras)
