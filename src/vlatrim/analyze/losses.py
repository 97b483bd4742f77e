"""Losses importance can be measured against, each with its likelihood (see ``LossSpec``).

A model's loss comes from its policy family (``vlatrim.families``): the reference VLA's action loss,
a text model's next-token cross-entropy, a flow-matching policy's own loss.
"""

from __future__ import annotations

from torch import nn

from vlatrim.analyze.base import LossSpec
from vlatrim.families import PolicyFamily
from vlatrim.families.transformers_lm import lm_loss

__all__ = ["family_loss_spec", "lm_loss", "lm_loss_spec"]


def family_loss_spec(family: PolicyFamily, model: nn.Module) -> LossSpec:
    """The loss ``family`` trains ``model`` with, as a ``LossSpec`` (scalar ``loss`` of its loss dict)."""
    info = family.loss_info(model)
    return LossSpec(lambda m, b: family.loss(m, b)["loss"], info.likelihood, info.terms_per_sample, info.name)


def lm_loss_spec(seq_len: int) -> LossSpec:
    """Next-token NLL of a causal LM; ``seq_len - 1`` predicted tokens per sequence."""
    return LossSpec(lm_loss, "nll", max(1, seq_len - 1), "next-token cross-entropy")
