"""Low-level cutters: they take a module and the indices to KEEP, and replace tensors in place.

Nothing here scores or chooses: callers pass indices. Every function keeps the original dtype, device,
``requires_grad`` and bias presence, and keeps the kept rows/columns in their original order, so a cut
that keeps everything is an exact identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlatrim.errors import VlatrimError


def as_index(keep: Sequence[int] | torch.Tensor, size: int, what: str) -> torch.Tensor:
    """Validate ``keep`` as sorted, unique indices into ``range(size)`` and return a LongTensor.

    Args:
        keep: indices to keep.
        size: length of the dimension they index.
        what: name used in error messages (e.g. ``"MLP channels of block 3"``).
    """
    idx = torch.as_tensor(list(keep) if not isinstance(keep, torch.Tensor) else keep, dtype=torch.long)
    if idx.ndim != 1 or idx.numel() == 0:
        raise VlatrimError(f"{what}: nothing would be kept; keep at least one of {size}")
    if int(idx.min()) < 0 or int(idx.max()) >= size:
        raise VlatrimError(f"{what}: index {int(idx.max()) if int(idx.max()) >= size else int(idx.min())} out of range; valid: 0..{size - 1}")
    if idx.unique().numel() != idx.numel():
        raise VlatrimError(f"{what}: repeated indices in {idx.tolist()}")
    return idx.sort().values


def _replace_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.contiguous().clone(), requires_grad=old.requires_grad))


def slice_linear(linear: nn.Linear, keep: torch.Tensor, dim: str) -> None:
    """Keep only some output features (``dim="out"``: weight rows and bias) or input features
    (``dim="in"``: weight columns) of ``linear``, in place.

    Args:
        linear: an ``nn.Linear`` (weight shape ``(out_features, in_features)``).
        keep: sorted LongTensor of indices to keep along that dimension.
        dim: ``"out"`` or ``"in"``.
    """
    if dim == "out":
        _replace_param(linear, "weight", linear.weight.data.index_select(0, keep.to(linear.weight.device)))
        if linear.bias is not None:
            _replace_param(linear, "bias", linear.bias.data.index_select(0, keep.to(linear.bias.device)))
        linear.out_features = int(keep.numel())
    elif dim == "in":
        _replace_param(linear, "weight", linear.weight.data.index_select(1, keep.to(linear.weight.device)))
        linear.in_features = int(keep.numel())
    else:  # programming error, not user input
        raise ValueError(f"dim must be 'out' or 'in', got {dim!r}")


def slice_embedding(emb: nn.Embedding, keep: torch.Tensor) -> None:
    """Keep only the rows ``keep`` of an embedding table, in place (ids are renumbered 0..len(keep)-1).

    A ``padding_idx`` that survives is renumbered; one that is cut is cleared.
    """
    _replace_param(emb, "weight", emb.weight.data.index_select(0, keep.to(emb.weight.device)))
    emb.num_embeddings = int(keep.numel())
    if emb.padding_idx is not None:
        hits = (keep == emb.padding_idx).nonzero()
        emb.padding_idx = int(hits[0, 0]) if hits.numel() else None


def head_rows(heads: torch.Tensor, head_dim: int, offset: int = 0) -> torch.Tensor:
    """Expand head indices to the projection rows they own: head h owns rows
    ``offset + h*head_dim ... offset + (h+1)*head_dim - 1``.

    Args:
        heads: LongTensor of head indices, shape (H',).
        head_dim: features per head.
        offset: first row of this projection inside a fused matrix (0 for a plain q/k/v).
    Returns:
        LongTensor of shape (H' * head_dim,).
    """
    return (offset + heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def fused_rows(parts: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Rows to keep in a fused projection made of consecutive parts.

    Args:
        parts: ``(part_size, kept_rows_within_part)`` for each part in order, e.g. for Phi-3 ``qkv_proj``
            ``[(n_q*hd, q_rows), (n_kv*hd, k_rows), (n_kv*hd, v_rows)]``.
    Returns:
        LongTensor of row indices into the fused weight.
    """
    out, offset = [], 0
    for size, rows in parts:
        out.append(rows + offset)
        offset += size
    return torch.cat(out)


def remove_from_module_list(blocks: nn.ModuleList, drop: Sequence[int]) -> list[int]:
    """Remove the blocks at indices ``drop`` from ``blocks`` in place.

    Returns:
        The original indices of the blocks that remain, in order.
    """
    drop_set = set(drop)
    kept = [i for i in range(len(blocks)) if i not in drop_set]
    survivors = [blocks[i] for i in kept]
    # Rebuild through the ModuleList API so hooks on the parent and the container type are preserved.
    for i in range(len(blocks) - 1, -1, -1):
        del blocks[i]
    for m in survivors:
        blocks.append(m)
    return kept


def renumber_layer_idx(block: nn.Module, new_idx: int) -> None:
    """Set every integer ``layer_idx`` attribute inside ``block`` (attention modules and layers use it to
    address their slot in the KV cache) to its new position."""
    for m in block.modules():
        if isinstance(getattr(m, "layer_idx", None), int):
            m.layer_idx = new_idx
