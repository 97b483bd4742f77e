"""FLOPs of one forward pass: analytic per block, and counted by ``torch.utils.flop_counter``.

Conventions (those of ``torch.utils.flop_counter``): a matmul of (M, K) x (K, N) is ``2 * M * K * N``
FLOPs (an int8 matmul of a quantized linear, ``aten._int_mm``, counts the same); bias adds, norms,
activations and softmax are not counted. For a transformer block over B
sequences of S tokens that gives

    linear    = 2 * B * S * (weights of every nn.Linear in the block)
    attention = 4 * B * S * S * num_heads * head_dim      (Q K^T and softmax(.) V, full S x S)

A causal decoder computes the full S x S scores in eager and SDPA execution too, so the count is the
same for encoders and decoders. The analytic count is what removing a block saves exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


def block_flops(block: nn.Module, layout: Any, batch: int, seq: int) -> dict[str, int]:
    """Analytic FLOPs of one block on ``batch`` sequences of ``seq`` tokens.

    Args:
        block: the block module.
        layout: its ``BlockLayout`` (``layout.attention`` gives heads and head width; None: no attention term).
        batch: sequences per forward.
        seq: tokens per sequence.
    Returns:
        ``{"linear", "attention", "total"}``.
    """
    weights = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
    linear = 2 * batch * seq * weights
    attn = layout.attention if layout is not None else None
    attention = 4 * batch * seq * seq * attn.num_heads * attn.head_dim if attn is not None else 0
    return {"linear": int(linear), "attention": int(attention), "total": int(linear + attention)}


def backbone_flops(handle: Any, batch: int, seq: int) -> dict[str, Any]:
    """Analytic FLOPs of the backbone's blocks (``handle`` from ``locate_backbone``).

    Returns:
        ``{"per_block": [total of block i], "blocks": sum, "linear": sum, "attention": sum, "batch", "seq"}``.
    """
    per = [block_flops(b, l, batch, seq) for b, l in zip(handle.blocks, handle.layouts)]
    return {"per_block": [p["total"] for p in per], "blocks": sum(p["total"] for p in per),
            "linear": sum(p["linear"] for p in per), "attention": sum(p["attention"] for p in per),
            "batch": batch, "seq": seq}


@contextlib.contextmanager
def eager_attention(module: nn.Module | None) -> Iterator[None]:
    """Run a transformers model with eager attention inside the block, then restore its setting.

    SDPA kernels on the CPU are invisible to the FLOP counter; eager attention computes the same
    scores with matmuls it does count.
    """
    cfg = getattr(module, "config", None)
    old = getattr(cfg, "_attn_implementation", None)
    setter = getattr(module, "set_attn_implementation", None)
    if module is None or setter is None or old in (None, "eager"):
        yield
        return
    try:
        setter("eager")
    except Exception:  # a model that cannot switch keeps its kernel; the count then misses attention
        yield
        return
    swapped = _legacy_sdpa_to_eager(module)
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls
        setter(old)


def _legacy_sdpa_to_eager(module: nn.Module) -> list[tuple[nn.Module, type]]:
    """transformers 4.x builds some attention modules (BERT's ``BertSdpaSelfAttention``) by the config's
    implementation at construction, so switching the config leaves them on SDPA. Such a module is a
    subclass ``XSdpaY`` of its eager class ``XY`` with the same state; give it the eager class for the
    count. Returns (module, its class) to restore. Nothing to do under transformers 5."""
    swapped = []
    for m in module.modules():
        cls = type(m)
        eager = cls.__mro__[1] if len(cls.__mro__) > 1 else None
        if "Sdpa" in cls.__name__ and eager is not None and eager.__name__ == cls.__name__.replace("Sdpa", ""):
            swapped.append((m, cls))
            m.__class__ = eager
    return swapped


def _int_mm_flop(a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``aten._int_mm`` (the int8 x int8 -> int32 matmul of dynamically quantized linears): ``2 * M * K * N``
    operations, counted as the float matmul it replaces is, so a quantized model's count equals its float
    model's."""
    m, k = a_shape
    _, n = b_shape
    return 2 * m * k * n


# Integer matmuls the counter does not know (its formulas cover floating-point ops only).
_INTEGER_OPS = {torch.ops.aten._int_mm: _int_mm_flop}


def counted_flops(fn: Callable[[], object], prefix: str | None = None) -> dict[str, Any]:
    """Count the FLOPs of ``fn()`` with ``torch.utils.flop_counter.FlopCounterMode``.

    Args:
        fn: one forward pass (closes over its inputs).
        prefix: also report the FLOPs inside the module whose counter name starts with this (the
            counter names modules ``<RootClass>.<dotted path>``).
    Returns:
        ``{"total", "by_op": {op: flops}, "module": flops inside ``prefix`` | None}``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_INTEGER_OPS) as fc:
        fn()
    counts = fc.get_flop_counts()
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    module = None
    if prefix is not None and prefix in counts:
        module = int(sum(counts[prefix].values()))
    return {"total": int(fc.get_total_flops()), "by_op": by_op, "module": module}
