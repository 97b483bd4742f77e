"""Embedding lookups in int8 tables that dequantize only the rows they read.

torchao's int8 row tables (``IntxWeightOnlyConfig(int8, PerAxis(0))``) implement ``F.embedding`` by
dequantizing the whole table and then gathering: on the int8 reference VLA (MiniLM's 30,522 x 384 word
table and its position and type tables) that was about 90% of an eager forward on CPU. A lookup reads a
few dozen rows, so ``RowGatherEmbedding`` gathers the int8 rows, scales and zero points of the ids first
and dequantizes just those with torchao's own ``dequantize_affine``: the same arithmetic row by row,
so the result equals torchao's lookup exactly. Stored tensors, names and state dicts do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _row_quantized(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a torchao int8 table with one scale per row."""
    return (type(weight).__name__ == "IntxUnpackedToInt8Tensor" and weight.dim() == 2
            and getattr(weight, "target_dtype", None) == torch.int8
            and list(getattr(weight, "block_size", ())) == [1, weight.shape[1]])


def gather_rows(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of the int8 row table ``weight``, dequantized (shape ``ids.shape + (dim,)``)."""
    from torchao.quantization.quant_primitives import dequantize_affine

    flat = ids.reshape(-1)
    info = torch.iinfo(torch.int8)
    rows = dequantize_affine(weight.qdata[flat], list(weight.block_size), weight.scale[flat],
                             weight.zero_point[flat], torch.int8, info.min, info.max, output_dtype=weight.dtype)
    return rows.reshape(*ids.shape, weight.shape[1])


class RowGatherEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose int8 row table is read row by row (see the module docstring); any other
    table, or a ``max_norm`` (which renormalises the table in place), goes through ``nn.Embedding``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (nn.Embedding's argument name)
        if self.max_norm is None and _row_quantized(self.weight):
            return gather_rows(self.weight, input)
        return F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


def gather_first_lookups(model: nn.Module) -> list[str]:
    """Make every ``nn.Embedding`` of ``model`` whose table is an int8 row table a ``RowGatherEmbedding``
    (in place: the module's class changes, nothing else); returns their names."""
    names = []
    for name, m in model.named_modules():
        if type(m) is nn.Embedding and _row_quantized(m.weight):
            m.__class__ = RowGatherEmbedding
            names.append(name)
    return names
