"""Shared machinery of the width scorers: per-head and per-channel masks on the backbone's projections.

Heads are gated at the output projection's input (the concatenated head outputs, num_heads x head_dim,
in head order); MLP channels at the down projection's input (the intermediate activations). Masks are
all ones, so the model computes exactly what it did; their gradients are the first-order Taylor terms
d L / d mask = sum over positions of activation * gradient (Molchanov et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vlatrim.analyze.base import ScoringContext
from vlatrim.analyze.hooks import frozen, input_hooks

Unit = tuple[str, nn.Module, int, int]  # (block path, projection module, units, unit width)


def head_units(ctx: ScoringContext) -> list[Unit]:
    """(block path, o projection, num_heads, head_dim) per backbone block."""
    h = ctx.handle
    return [(lay.path, h.blocks[i].get_submodule(lay.attention.o), lay.attention.num_heads, lay.attention.head_dim)
            for i, lay in enumerate(h.layouts)]


def channel_units(ctx: ScoringContext) -> list[Unit]:
    """(block path, down projection, intermediate size, 1) per backbone block."""
    h = ctx.handle
    return [(lay.path, h.blocks[i].get_submodule(lay.mlp.down), lay.mlp.intermediate_size, 1)
            for i, lay in enumerate(h.layouts)]


def taylor(ctx: ScoringContext, units: list[Unit], desc: str) -> dict[str, torch.Tensor]:
    """|mean over batches of d L / d mask_u| for every unit u: one forward/backward per batch."""
    masks = [torch.ones(n, requires_grad=True) for _, _, n, _ in units]
    acc = [torch.zeros(n, dtype=torch.float64) for _, _, n, _ in units]

    def fn(i: int, x: torch.Tensor) -> torch.Tensor:
        _, _, n, w = units[i]
        m = masks[i].to(x.dtype).repeat_interleave(w)  # (n * w,): one mask value per unit, spread over its width
        return x * m  # (..., n * w)

    with frozen(ctx.model), input_hooks([u[1] for u in units], fn):
        for batch in ctx.iter_batches(desc):
            grads = torch.autograd.grad(ctx.loss_value(batch), masks, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a += g.double()
    return {u[0]: (a / len(ctx.batches)).abs() for u, a in zip(units, acc)}


@torch.no_grad()
def magnitude(ctx: ScoringContext, units: list[Unit], desc: str) -> dict[str, torch.Tensor]:
    """Mean over the real positions of the calibration set of the L2 norm of each unit's contribution
    to the projection's output (padding positions, as ``ctx.real_positions`` marks them, do not count).

    For a unit with input slice x_u (..., w) and weight columns W_u (out, w) the contribution is
    x_u W_u^T; its norm is what removing the unit takes out of the residual stream (bias aside).
    """
    acc = [torch.zeros(n, dtype=torch.float64) for _, _, n, _ in units]
    count = [0] * len(units)
    language = ctx.handle.pathways()["language"][0]  # width units are the language backbone's
    batch = None

    def fn(i: int, x: torch.Tensor) -> None:
        _, mod, n, w = units[i]
        real = ctx.real_positions(batch, language, x) if x.dim() == 3 else None  # (B, S) or None
        xu = (x[real] if real is not None else x).reshape(-1, n, w).float()  # (P, n, w): counted positions
        wu = mod.weight.float().reshape(mod.weight.shape[0], n, w)  # (out, n, w)
        # ||x_u W_u^T||^2 = x_u (W_u^T W_u) x_u^T: a w x w Gram per unit instead of a (P, n, out) tensor.
        gram = torch.einsum("onw,onv->nwv", wu, wu)  # (n, w, w)
        sq = torch.einsum("pnw,nwv,pnv->pn", xu, gram, xu)  # (P, n)
        acc[i] += sq.clamp_min(0).sqrt().sum(0).double()
        count[i] += sq.shape[0]
        return None

    with input_hooks([u[1] for u in units], fn):
        for batch in ctx.iter_batches(desc):  # fn reads the current batch
            ctx.loss_value(batch)
    return {u[0]: a / max(c, 1) for u, a, c in zip(units, acc, count)}


def kv_group_scores(ctx: ScoringContext, head_scores: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per KV head: the sum of its query heads' scores (the unit a GQA-aware cut removes whole)."""
    out = {}
    for lay in ctx.handle.layouts:
        a = lay.attention
        out[lay.path] = head_scores[lay.path].view(a.num_kv_heads, a.kv_groups).sum(-1).tolist()
    return out


ScoreFn = Callable[[ScoringContext, list[Unit], str], dict[str, torch.Tensor]]
