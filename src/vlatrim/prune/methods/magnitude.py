"""Weight-magnitude importance for heads and MLP channels, the fallback when no analysis scores are
given: how strongly each head / channel can write into the residual stream."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def head_magnitudes(block: torch.nn.Module, att: Any) -> torch.Tensor:
    """Per query head: Frobenius norm of its columns in the output projection. Shape (num_heads,)."""
    w = block.get_submodule(att.o).weight  # (hidden, num_heads * head_dim)
    return w.float().reshape(w.shape[0], att.num_heads, att.head_dim).pow(2).sum((0, 2)).sqrt()


@torch.no_grad()
def channel_magnitudes(block: torch.nn.Module, mlp: Any) -> torch.Tensor:
    """Per MLP channel: norm of its input row(s) times norm of its output column. Shape (intermediate,)."""
    down = block.get_submodule(mlp.down).weight.float()  # (hidden, I)
    out_norm = down.norm(dim=0)
    if mlp.kind == "fused_gated":
        gu = block.get_submodule(mlp.gate_up).weight.float()  # (2I, hidden)
        in_norm = gu[: mlp.intermediate_size].norm(dim=1) * gu[mlp.intermediate_size:].norm(dim=1)
    else:
        in_norm = block.get_submodule(mlp.up).weight.float().norm(dim=1)
        if mlp.gate:
            in_norm = in_norm * block.get_submodule(mlp.gate).weight.float().norm(dim=1)
    return in_norm * out_norm
