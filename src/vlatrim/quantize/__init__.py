"""Quantization after pruning, through torchao: the schemes (``schemes``) and how quantized tensors are
stored in safetensors and counted (``tensors``), and embedding lookups that dequantize only the rows they
read (``embedding``).

A quantized checkpoint is its policy family's checkpoint directory with the weights replaced by
torchao's quantized tensors (stored in safetensors, no pickle) and the scheme recorded in
``config.json`` under ``vlatrim_quantization``; ``vlatrim.families.quantized`` writes and loads it, so
every verb that takes a checkpoint takes a quantized one.
"""

from vlatrim.quantize.embedding import RowGatherEmbedding, gather_first_lookups
from vlatrim.quantize.schemes import QUANT_KEY, SCHEMES, QuantScheme, apply_scheme, runnable_schemes
from vlatrim.quantize.tensors import (
           is_quantized_tensor,
           load_quantized_state,
           save_quantized_state,
           state_nbytes,
           storage_key,
           stored_nbytes,
)

__all__ = ["QUANT_KEY", "SCHEMES", "QuantScheme", "RowGatherEmbedding", "apply_scheme", "gather_first_lookups",
           "is_quantized_tensor", "load_quantized_state",
           "runnable_schemes", "save_quantized_state", "state_nbytes", "storage_key", "stored_nbytes"]
