"""Action heads: the backbone's hidden states at the action-query positions -> an action chunk.

Both heads decode the whole chunk in one parallel pass (one learned query per future step, as in
OpenVLA-OFT), so inference is a single backbone forward whatever the head.

Shape notation: B batch, T chunk length, A action dims, D backbone width, K bins.
A head offers ``forward(h (B, T, D)) -> raw``, ``loss(raw, target (B, T, A), mask (B, T),
denominator=None) -> dict`` (``target`` in normalized units) and ``decode(raw) -> (B, T, A)``
normalized actions.

Losses are means over the chunk steps inside the episode (``mask``). ``denominator`` replaces the
batch's own count of such steps: the training loop passes the count over the whole global batch
divided by the number of shares it is split into (processes x accumulation micro-batches), so the
averaged shares give the mean over the global batch, not a mean of per-share means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlatrim.registry import Registry

ACTION_HEADS: Registry[type[nn.Module]] = Registry("action head")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, denominator: torch.Tensor | None = None) -> torch.Tensor:
    # x: (B, T, ...) per-element errors; mask: (B, T) True where the chunk step lies inside the episode;
    # denominator: chunk steps to divide by (default: mask.sum()); each step holds x.numel() / mask.numel() elements.
    m = mask.to(x.dtype).reshape(mask.shape + (1,) * (x.dim() - mask.dim())).expand_as(x)
    steps = mask.sum() if denominator is None else denominator
    return (x * m).sum() / (steps.to(x.dtype) * (x.numel() // mask.numel())).clamp_min(1e-6)


@ACTION_HEADS.register("continuous")
class ContinuousHead(nn.Module):
    """Regression of the normalized chunk: LayerNorm -> MLP -> A values per query; L1 (or MSE) loss."""

    def __init__(self, config, hidden: int) -> None:
        super().__init__()
        self.loss_kind = config.continuous_loss
        self.net = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, config.action_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)  # (B, T, A)

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             denominator: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        raw = raw.float()
        l1 = _masked_mean((raw - target).abs(), mask, denominator)
        mse = _masked_mean((raw - target).square(), mask, denominator)
        return {"loss": l1 if self.loss_kind == "l1" else mse, "l1": l1, "mse": mse}

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float()


@ACTION_HEADS.register("discrete")
class DiscreteHead(nn.Module):
    """K uniform bins per action dimension over the normalized range [-1, 1]; cross-entropy loss.

    OpenVLA's discretisation, decoded in parallel: each query predicts the bins of all A dims of its step.
    """

    def __init__(self, config, hidden: int) -> None:
        super().__init__()
        self.action_dim = config.action_dim
        self.n_bins = config.n_bins
        self.norm = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, config.action_dim * config.n_bins)
        # Bin centres in normalized units, (K,); not saved: they follow from n_bins.
        self.register_buffer("centers", torch.linspace(-1.0, 1.0, config.n_bins), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, _ = h.shape
        return self.proj(self.norm(h)).view(B, T, self.action_dim, self.n_bins)  # (B, T, A, K)

    def to_bins(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized values (any shape, clipped to [-1, 1]) -> nearest bin index (long)."""
        scaled = (x.clamp(-1.0, 1.0) + 1.0) / 2.0 * (self.n_bins - 1)
        return scaled.round().long()

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             denominator: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = raw.float()
        ce = F.cross_entropy(logits.flatten(0, 2), self.to_bins(target).flatten(), reduction="none")
        ce = _masked_mean(ce.view(target.shape), mask, denominator)
        pred = self.decode(logits)
        return {"loss": ce, "ce": ce, "l1": _masked_mean((pred - target).abs(), mask, denominator),
                "mse": _masked_mean((pred - target).square(), mask, denominator)}

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return self.centers[raw.argmax(-1)]  # (B, T, A)
