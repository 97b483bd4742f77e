"""Width cutters: attention heads (GQA-aware) and MLP channels of one block, by kept indices."""

from __future__ import annotations

import copy

import torch
from torch import nn

from vlatrim.prune.gqa import kv_heads_for
from vlatrim.prune.ops import fused_rows, head_rows, slice_linear


def cut_attention_heads(
    *,
    o: nn.Linear,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    keep_q: torch.Tensor,
    q: nn.Linear | None = None,
    k: nn.Linear | None = None,
    v: nn.Linear | None = None,
    qkv: nn.Linear | None = None,
    what: str = "heads",
) -> torch.Tensor:
    """Remove query heads (and the KV heads left without queries) from one attention module.

    Either ``q``/``k``/``v`` or a fused ``qkv`` (rows ``[q | k | v]``, Phi-3 layout) must be given.

    Args:
        o: output projection; its input columns are grouped by query head.
        num_heads / num_kv_heads / head_dim: the module's current layout.
        keep_q: sorted LongTensor of query heads to keep (checked for GQA consistency).
        what: name used in error messages.
    Returns:
        Sorted LongTensor of the KV heads kept.
    """
    keep_kv = kv_heads_for(keep_q, num_heads, num_kv_heads, what)
    q_rows = head_rows(keep_q, head_dim)       # (H' * hd,)
    kv_rows = head_rows(keep_kv, head_dim)     # (K' * hd,)
    if qkv is not None:
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        slice_linear(qkv, fused_rows([(q_size, q_rows), (kv_size, kv_rows), (kv_size, kv_rows)]), "out")
    else:
        slice_linear(q, q_rows, "out")
        slice_linear(k, kv_rows, "out")
        slice_linear(v, kv_rows, "out")
    slice_linear(o, q_rows, "in")
    return keep_kv


# Attributes that attention implementations in transformers read at forward time, by meaning.
_HEAD_ATTRS = ("num_heads", "num_attention_heads")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads")


def set_attention_counts(attn: nn.Module, num_heads: int, num_kv_heads: int, head_dim: int,
                         config_heads_field: str = "num_attention_heads",
                         config_kv_field: str = "num_key_value_heads") -> None:
    """Make an attention module's bookkeeping agree with its new tensors.

    Updates whichever of the usual attributes exist (``num_heads`` / ``num_attention_heads``,
    ``num_key_value_heads``, ``num_key_value_groups`` used by ``repeat_kv``, BERT's ``all_head_size``).
    Some implementations read head counts from ``self.config`` at forward time (Phi-3 splits its fused
    qkv at ``config.num_attention_heads * head_dim``); when the module's config disagrees, the module
    gets its own shallow copy carrying this block's counts, so blocks may differ.
    """
    for a in _HEAD_ATTRS:
        if isinstance(getattr(attn, a, None), int):
            setattr(attn, a, num_heads)
    for a in _KV_ATTRS:
        if isinstance(getattr(attn, a, None), int):
            setattr(attn, a, num_kv_heads)
    if isinstance(getattr(attn, "num_key_value_groups", None), int):
        attn.num_key_value_groups = num_heads // num_kv_heads
    if isinstance(getattr(attn, "all_head_size", None), int):
        attn.all_head_size = num_heads * head_dim
    cfg = getattr(attn, "config", None)
    if cfg is not None and hasattr(cfg, config_heads_field):
        if getattr(cfg, config_heads_field) != num_heads or getattr(cfg, config_kv_field, num_kv_heads) != num_kv_heads:
            own = copy.copy(cfg)
            own.__dict__[config_heads_field] = num_heads
            if hasattr(cfg, config_kv_field):
                own.__dict__[config_kv_field] = num_kv_heads
            attn.config = own


def cut_mlp_channels(*, inputs: list[nn.Linear], down: nn.Linear, keep: torch.Tensor,
                     fused_gate_up: nn.Linear | None = None, intermediate_size: int | None = None) -> None:
    """Remove intermediate channels from one MLP.

    Args:
        inputs: projections whose output rows are channels (gate and up, or BERT's intermediate dense).
        down: projection whose input columns are channels.
        keep: sorted LongTensor of channels to keep.
        fused_gate_up: a fused ``[gate | up]`` projection (Phi-3), used instead of ``inputs``.
        intermediate_size: channels per half of ``fused_gate_up``.
    """
    for lin in inputs:
        slice_linear(lin, keep, "out")
    if fused_gate_up is not None:
        slice_linear(fused_gate_up, fused_rows([(intermediate_size, keep), (intermediate_size, keep)]), "out")
    slice_linear(down, keep, "in")
