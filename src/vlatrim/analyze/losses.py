"""Loss functions importance can be measured against, each with its likelihood (see ``LossSpec``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlatrim.analyze.base import LossSpec


def action_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """A VLA's action loss: ``model.compute_loss(batch)["loss"]`` (the model contract)."""
    return model.compute_loss(batch)["loss"]


def vla_loss_spec(model: nn.Module) -> LossSpec:
    """The action loss of a reference VLA, with the likelihood its head trains with.

    Continuous heads regress T x A values per sample with L1 or MSE; the discrete head's cross-entropy
    averages T x A categorical terms.
    """
    cfg = model.config
    terms = int(cfg.chunk_size) * int(cfg.action_dim)
    if getattr(cfg, "action_head", "continuous") == "discrete":
        return LossSpec(action_loss, "nll", terms, "action cross-entropy")
    kind = getattr(cfg, "continuous_loss", "l1")
    return LossSpec(action_loss, "l1" if kind == "l1" else "mse", terms, f"action {kind}")


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM on ``input_ids`` (padding masked by ``attention_mask``),
    averaged per sequence and then over the batch, so it is a mean of per-sample losses."""
    ids = batch["input_ids"]  # (B, L)
    mask = batch.get("attention_mask", torch.ones_like(ids))
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, L-1, V)
    tgt, m = ids[:, 1:], mask[:, 1:].to(logits.dtype)
    ce = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none").view_as(m)
    per_seq = (ce * m).sum(1) / m.sum(1).clamp_min(1)
    return per_seq.mean()


def lm_loss_spec(seq_len: int) -> LossSpec:
    """Next-token NLL of a causal LM; ``seq_len - 1`` predicted tokens per sequence."""
    return LossSpec(lm_loss, "nll", max(1, seq_len - 1), "next-token cross-entropy")
