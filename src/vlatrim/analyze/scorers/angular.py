"""Angular distance between the residual stream before block l and after block l + n - 1 (spans of n).

d(l, n) = arccos(cos(x_l, x_{l+n})) / pi: a small d means the n blocks from l on can go together.
``position="all"`` (default) averages it over the real tokens of the calibration set (padding excluded,
as ShortGPT averages block influence); ``position="last"`` reads only each sample's last real token, as
Gromov et al. ("The Unreasonable Ineffectiveness of the Deeper Layers") define it for causal LMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.analyze.hooks import Boundaries
from vlatrim.errors import VlatrimError

POSITIONS = ("all", "last")


def last_positions(xs: list[torch.Tensor], real: torch.Tensor | None, path: str) -> list[torch.Tensor]:
    """Each sample's hidden state at its last real position: (B, S, D) -> (B, D) for every x in ``xs``."""
    x0 = xs[0]
    if x0.dim() < 3:
        raise VlatrimError(f"angular position='last' needs (batch, sequence, hidden) states; {path} gives "
                           f"{tuple(x0.shape)}; use position='all'")
    S = x0.shape[-2]
    if real is None:
        idx = torch.full(x0.shape[:-2], S - 1, dtype=torch.long, device=x0.device)  # (B,)
    else:
        # Largest index whose mask is set (left or right padding alike); a sample with none keeps 0.
        idx = (real.long() * torch.arange(S, device=real.device)).argmax(-1)  # (B,)
    gather = idx[..., None, None].expand(*idx.shape, 1, x0.shape[-1])  # (B, 1, D)
    return [x.gather(-2, gather).squeeze(-2) for x in xs]


@SCORERS.register("angular")
@dataclass
class AngularDistance(Scorer):
    """Per-block score: d(l, span); extras["spans"][path][n-1][l] = d(l, n) for every n (the heatmap)."""

    span: int = 1
    """Span n whose distances are the per-block scores (block l scores the span starting at l)."""
    position: str = "all"
    """Which positions the distance averages over: "all" real tokens, or each sample's "last" real token."""

    name = "angular"
    unit = "block"
    loss_units = False  # an angle / pi, not a loss
    preference = 3

    def __post_init__(self) -> None:
        if not isinstance(self.span, int) or self.span < 1:
            raise VlatrimError(f"angular span={self.span!r} must be a positive integer")
        if self.position not in POSITIONS:
            raise VlatrimError(f"angular position={self.position!r} is not valid; valid: {', '.join(POSITIONS)}")

    @torch.no_grad()
    def score(self, ctx: ScoringContext) -> ScoreResult:
        scores, spans, masked = {}, {}, {}
        for bl in ctx.block_lists():
            N = len(bl)
            if self.span > N:
                raise VlatrimError(f"angular span={self.span} is longer than {bl.path} ({N} blocks)")
            acc = torch.zeros(N, N, dtype=torch.float64)  # acc[n-1, l] = sum of d(l, n); zero where l + n > N
            count = 0  # positions summed
            cap = Boundaries(bl.modules)
            for batch in ctx.iter_batches(f"angular: {bl.path}"):
                with cap.attach():
                    ctx.loss_value(batch)
                xs = [x.float() for x in cap.states]  # N+1 tensors (B, S, D)
                real = ctx.real_positions(batch, bl, xs[0])  # (B, S) bool or None
                masked[bl.path] = real is not None
                if self.position == "last":
                    xs = last_positions(xs, real, bl.path)  # (B, D) each
                elif real is not None:
                    xs = [x[real] for x in xs]  # (real positions, D) each
                count += xs[0][..., 0].numel()
                for n in range(1, N + 1):
                    for l in range(0, N - n + 1):
                        cos = F.cosine_similarity(xs[l], xs[l + n], dim=-1).clamp(-1, 1)
                        acc[n - 1, l] += (torch.arccos(cos) / torch.pi).sum().double()
            acc /= max(count, 1)
            # Block l scores the span of `span` blocks that starts at it; blocks too late to start one
            # score the last full span that covers them.
            s = self.span
            scores[bl.path] = torch.stack([acc[s - 1, min(l, N - s)] for l in range(N)])
            spans[bl.path] = [[acc[n - 1, l].item() for l in range(N - n + 1)] for n in range(1, N + 1)]
        return ScoreResult(scores, {"spans": spans, "span": self.span, "position": self.position,
                                    "padding_masked": masked})
