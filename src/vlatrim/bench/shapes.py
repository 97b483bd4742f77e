"""Real-scale VLA shapes without their weights: the language backbone (and the action expert) of
OpenVLA-7B, SmolVLA and pi0 at their published dimensions, with random weights, for ``vlatrim bench
--shape NAME [--keep K | --drop-blocks I,J]``.

The shapes are data (``SHAPES``, one table). A tower is a stack of pre-norm decoder blocks: RMSNorm,
Q/K/V/O projections without bias (grouped KV heads), RMSNorm, a gated MLP (gate, up, down), a final
RMSNorm, an optional input embedding and an optional untied LM head. One **policy query** is what the
policy runs per observation:

- OpenVLA-7B (autoregressive): the prefix forward over image + prompt tokens with the LM head on the
  last position (action token 1), then ``decode_steps`` single-token steps against the prefix's KV
  cache (tokens 2-7 of the 7-DoF action);
- SmolVLA and pi0 (flow matching): the prefix forward once, then ``denoise_steps`` forwards of the
  action expert over its suffix tokens, attending to the prefix's KV cache. SmolVLA's expert alternates
  self-attention layers (joint over prefix + suffix keys; even layer indices) and cross-attention
  layers (keys and values re-projected from the VLM's cached 320-wide K / V states by the expert's own
  ``k_proj`` / ``v_proj``; odd indices); every pi0 expert layer attends to prefix + suffix.

The FLOPs of a query are exact under the ``torch.utils.flop_counter`` conventions (matmuls only:
``2 * tokens * Linear weights + 4 * Tq * Tk * heads * head_dim`` per attention) and equal what the
counter sees on the meta device. Not modelled (no matmul FLOPs, or tiny): rotary embeddings, attention
masks (a prefix-LM or causal mask zeroes scores but the eager count is the full matrix, as in
``vlatrim.bench.flops``), Gemma's embedding scaling, the vision encoders and projectors, pi0's / SmolVLA's
state, action and time projections (each under 0.1 % of a query), and the KV-cache growth during
OpenVLA's 6 decode steps (the cache is the prefix's throughout). A depth cut removes the same layer
indices from the backbone and the expert (the coupled cut of the LeRobot family); a layer keeps the
attention kind of its original index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlatrim.errors import VlatrimError


@dataclass(frozen=True)
class Tower:
    """One decoder stack."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int = 0  # input embedding rows (0: none)
    lm_head: bool = False  # an untied LM head of ``vocab`` rows (a tied head adds no parameters)
    act: str = "silu"  # gated MLP activation: silu (Llama) or gelu_tanh (Gemma)
    cross_kv_in: int = 0  # > 0: layers with odd index take K/V from prefix states this wide (SmolVLA)


@dataclass(frozen=True)
class Shape:
    """A VLA's language part at real dimensions, its inputs and its query structure."""

    name: str
    description: str
    backbone: Tower
    expert: Tower | None
    prefix: dict[str, int]  # token counts by kind (image, text, state); their sum is the prefix length
    suffix_tokens: int = 0  # expert tokens per denoising step
    denoise_steps: int = 0
    decode_steps: int = 0  # single-token decode steps after the prefix (autoregressive actions)
    chunk_size: int = 1  # actions per query
    published: dict[str, Any] = field(default_factory=dict)  # parameter counts to check against

    @property
    def prefix_tokens(self) -> int:
        return sum(self.prefix.values())


LLAMA2_7B = Tower(layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32000,
                  lm_head=True)
SMOLVLM2_TEXT = Tower(layers=32, hidden=960, heads=15, kv_heads=5, head_dim=64, intermediate=2560, vocab=49280)
GEMMA_2B = Tower(layers=18, hidden=2048, heads=8, kv_heads=1, head_dim=256, intermediate=16384, vocab=256000,
                 act="gelu_tanh")

SHAPES: dict[str, Shape] = {
    "openvla-7b": Shape(
        "openvla-7b",
        "OpenVLA-7B's language model: Llama-2-7B (32 layers, hidden 4096, MLP 11008, 32 heads) with the vocabulary "
        "padded to 32064 (pad_to_multiple_of 64 in its config.json), untied LM head; 256 fused DINOv2+SigLIP patch "
        "tokens at 224 px + a ~20-token prompt; 7 action tokens decoded greedily (prefix + 6 decode steps)",
        backbone=Tower(32, 4096, 32, 32, 128, 11008, vocab=32064, lm_head=True), expert=None,
        prefix={"image": 256, "text": 20}, decode_steps=6, chunk_size=1,
        published={"llama-2-7b": 6_738_415_616}),
    "smolvla": Shape(
        "smolvla",
        "SmolVLA: SmolVLM2-500M's text model (SmolLM2-360M shape: hidden 960, 15 heads, 5 KV heads, MLP 2560, "
        "vocab 49280) cut to its first 16 layers; action expert of 16 layers at 0.75 width (hidden 720, MLP 2048 "
        "by LeRobot's get_intermediate_size, same heads), cross-attention every other layer; 2 cameras x 64 "
        "tokens + 48 text tokens + 1 state token; 50-action chunk, 10 flow-matching steps",
        backbone=Tower(16, 960, 15, 5, 64, 2560, vocab=49280),
        expert=Tower(16, 720, 15, 5, 64, 2048, cross_kv_in=5 * 64),
        prefix={"image": 128, "text": 48, "state": 1}, suffix_tokens=50, denoise_steps=10, chunk_size=50,
        published={"smollm2-360m": 361_821_120}),
    "pi0": Shape(
        "pi0",
        "pi0: PaliGemma's Gemma-2B (18 layers, hidden 2048, 8 heads, 1 KV head of 256, MLP 16384, vocab 257152, "
        "tied head) + the Gemma-300M action expert (18 layers, hidden 1024, MLP 4096, same heads); 3 cameras x "
        "256 tokens + 48 text tokens; suffix of 1 state + 50 action tokens; 10 flow-matching steps",
        backbone=Tower(18, 2048, 8, 1, 256, 16384, vocab=257152, act="gelu_tanh"),
        expert=Tower(18, 1024, 8, 1, 256, 4096, act="gelu_tanh"),
        prefix={"image": 768, "text": 48}, suffix_tokens=51, denoise_steps=10, chunk_size=50,
        published={"gemma-2b": 2_506_172_416}),
}


# ---------------------------------------------------------------------------------------------------------------
# parameters and FLOPs, analytically


def _is_cross(t: Tower, index: int) -> bool:
    return t.cross_kv_in > 0 and index % 2 == 1


def block_params(t: Tower, index: int) -> int:
    """Parameters of layer ``index`` (its original index: it fixes SmolVLA's self / cross kind)."""
    q = t.hidden * t.heads * t.head_dim
    kv_in = t.cross_kv_in if _is_cross(t, index) else t.hidden
    kv = 2 * kv_in * t.kv_heads * t.head_dim
    return 2 * q + kv + 3 * t.hidden * t.intermediate + 2 * t.hidden


def tower_params(t: Tower, keep: Sequence[int]) -> dict[str, int]:
    """``{blocks, embedding, lm_head, norm, total}`` of ``t`` with layers ``keep``."""
    blocks = sum(block_params(t, i) for i in keep)
    emb = t.vocab * t.hidden
    head = t.vocab * t.hidden if t.lm_head else 0
    return {"blocks": blocks, "embedding": emb, "lm_head": head, "norm": t.hidden,
            "total": blocks + emb + head + t.hidden}


def shape_params(shape: Shape, keep: Sequence[int]) -> dict[str, Any]:
    bb = tower_params(shape.backbone, keep)
    ex = tower_params(shape.expert, keep) if shape.expert else None
    return {"backbone": bb["total"], "blocks": bb["blocks"], "embedding": bb["embedding"], "lm_head": bb["lm_head"],
            "expert": ex["total"] if ex else 0, "expert_blocks": ex["blocks"] if ex else 0,
            "total": bb["total"] + (ex["total"] if ex else 0)}


def block_flops(t: Tower, index: int, batch: int, tq: int, tk: int) -> int:
    """FLOPs of layer ``index`` for ``tq`` query tokens attending to ``tk`` keys (a cross layer projects
    its ``tk`` prefix states; a self layer projects its own ``tq`` tokens and attends to ``tk``)."""
    q = t.hidden * t.heads * t.head_dim
    kv_w = t.kv_heads * t.head_dim
    kv_tokens, kv_in = (tk, t.cross_kv_in) if _is_cross(t, index) else (tq, t.hidden)
    linear = 2 * batch * (tq * (2 * q + 3 * t.hidden * t.intermediate) + kv_tokens * 2 * kv_in * kv_w)
    return linear + 4 * batch * tq * tk * t.heads * t.head_dim


def query_flops(shape: Shape, keep: Sequence[int], batch: int = 1) -> dict[str, int]:
    """FLOPs of one policy query: ``{prefix, step, steps, total}`` (``step``: one decode or denoising step)."""
    s, bb = shape.prefix_tokens, shape.backbone
    head1 = 2 * batch * bb.vocab * bb.hidden if bb.lm_head else 0  # LM head on one position
    prefix = sum(block_flops(bb, i, batch, s, s) for i in keep)
    if shape.expert is not None:
        t, ex = shape.suffix_tokens, shape.expert
        step = sum(block_flops(ex, i, batch, t, s if _is_cross(ex, i) else s + t) for i in keep)
        steps = shape.denoise_steps
    else:
        prefix += head1
        step = sum(block_flops(bb, i, batch, 1, s + 1) for i in keep) + head1
        steps = shape.decode_steps
    return {"prefix": prefix, "step": step, "steps": steps, "total": prefix + steps * step}


# ---------------------------------------------------------------------------------------------------------------
# modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Block(nn.Module):
    """Pre-norm decoder block; ``cross``: K / V projected from prefix states of width ``kv_in``."""

    def __init__(self, t: Tower, index: int) -> None:
        super().__init__()
        self.t, self.index, self.cross = t, index, _is_cross(t, index)
        kv_in = t.cross_kv_in if self.cross else t.hidden
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(t.hidden), RMSNorm(t.hidden)
        self.q_proj = nn.Linear(t.hidden, t.heads * t.head_dim, bias=False)
        self.k_proj = nn.Linear(kv_in, t.kv_heads * t.head_dim, bias=False)
        self.v_proj = nn.Linear(kv_in, t.kv_heads * t.head_dim, bias=False)
        self.o_proj = nn.Linear(t.heads * t.head_dim, t.hidden, bias=False)
        self.gate_proj = nn.Linear(t.hidden, t.intermediate, bias=False)
        self.up_proj = nn.Linear(t.hidden, t.intermediate, bias=False)
        self.down_proj = nn.Linear(t.intermediate, t.hidden, bias=False)
        self.eager = False  # explicit matmul attention (what the FLOP counter sees on any device) instead of SDPA

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:  # (B, T, n*hd) -> (B, n, T, hd)
        b, tt, _ = x.shape
        return x.view(b, tt, n, self.t.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                cross_src: torch.Tensor | None = None) -> torch.Tensor:
        t = self.t
        h = self.input_layernorm(x)
        q = self._heads(self.q_proj(h), t.heads)
        src = cross_src if self.cross else h
        k, v = self._heads(self.k_proj(src), t.kv_heads), self._heads(self.v_proj(src), t.kv_heads)
        if past is not None and not self.cross:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        rep = t.heads // t.kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        if self.eager:
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(t.head_dim), -1) @ v
        else:
            att = F.scaled_dot_product_attention(q, k, v)
        b, _, tq, _ = att.shape
        x = x + self.o_proj(att.transpose(1, 2).reshape(b, tq, t.heads * t.head_dim))
        h = self.post_attention_layernorm(x)
        act = F.silu if t.act == "silu" else (lambda z: F.gelu(z, approximate="tanh"))
        return x + self.down_proj(act(self.gate_proj(h)) * self.up_proj(h))


class TowerModule(nn.Module):
    """A decoder stack with layers ``keep`` (original indices)."""

    def __init__(self, t: Tower, keep: Sequence[int]) -> None:
        super().__init__()
        self.t = t
        self.embed_tokens = nn.Embedding(t.vocab, t.hidden) if t.vocab else None
        self.layers = nn.ModuleList(Block(t, i) for i in keep)
        self.norm = RMSNorm(t.hidden)
        self.lm_head = nn.Linear(t.hidden, t.vocab, bias=False) if t.lm_head else None

    def forward(self, x: torch.Tensor, pasts: Sequence[Any] | None = None, cross: Sequence[Any] | None = None,
                head_last: bool = False) -> torch.Tensor:
        for j, blk in enumerate(self.layers):
            x = blk(x, pasts[j] if pasts is not None else None, cross[j] if cross is not None else None)
        x = self.norm(x)
        if head_last and self.lm_head is not None:
            return self.lm_head(x[:, -1:])
        return x


class ShapeModel(nn.Module):
    """The backbone (and expert) of a shape with layers ``keep``."""

    def __init__(self, shape: Shape, keep: Sequence[int]) -> None:
        super().__init__()
        self.shape, self.keep = shape, list(keep)
        self.backbone = TowerModule(shape.backbone, keep)
        self.expert = TowerModule(shape.expert, keep) if shape.expert else None

    def set_eager(self, eager: bool) -> None:
        for m in self.modules():
            if isinstance(m, Block):
                m.eager = eager


def resolve_keep(shape: Shape, keep: int | None = None, drop: Sequence[int] | None = None) -> list[int]:
    """Kept layer indices: all, the first ``keep``, or all but ``drop``."""
    n = shape.backbone.layers
    if keep is not None and drop:
        raise VlatrimError("give --keep or --drop-blocks, not both")
    if keep is not None:
        if not 1 <= keep <= n:
            raise VlatrimError(f"--keep must be in 1..{n} for {shape.name}, got {keep}")
        return list(range(keep))
    if drop:
        bad = sorted(i for i in drop if not 0 <= i < n)
        if bad or len(set(drop)) == n:
            raise VlatrimError(f"--drop-blocks must name distinct layers in 0..{n - 1} and keep at least one "
                               f"({shape.name} has {n}); got {list(drop)}")
        return [i for i in range(n) if i not in set(drop)]
    return list(range(n))


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise VlatrimError(f"unknown --shape {name!r}; known: {', '.join(SHAPES)}")
    return SHAPES[name]


def build(shape: Shape, keep: Sequence[int], device: torch.device | str = "meta",
          dtype: torch.dtype = torch.float32, seed: int = 0) -> ShapeModel:
    """The model on ``device``: on ``meta`` no memory is allocated; elsewhere weights are random
    (normal, std 0.02; norms 1), drawn on the device."""
    with torch.device("meta"):
        model = ShapeModel(shape, keep)
    model = model.to(dtype=dtype)
    if torch.device(device).type == "meta":
        return model.eval()
    model = model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def forwards(model: ShapeModel, batch: int = 1, seed: int = 0) -> tuple[Callable[[], object], Callable[[], object]]:
    """(full policy query, prefix forward) on fixed random inputs on the model's device and dtype."""
    shape = model.shape
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    g = torch.Generator(device=dev).manual_seed(seed) if dev.type != "meta" else None

    def rnd(*size: int) -> torch.Tensor:
        if dev.type == "meta":
            return torch.empty(*size, device=dev, dtype=dt)
        return torch.randn(*size, device=dev, dtype=dt, generator=g)

    s, bb = shape.prefix_tokens, shape.backbone
    prefix_x = rnd(batch, s, bb.hidden)
    n = len(model.keep)

    def prefix() -> object:
        return model.backbone(prefix_x, head_last=True)

    if model.expert is not None:
        ex = shape.expert
        suffix = rnd(batch, shape.suffix_tokens, ex.hidden)
        cache = [(rnd(batch, bb.kv_heads, s, bb.head_dim), rnd(batch, bb.kv_heads, s, bb.head_dim)) for _ in range(n)]
        cross = [rnd(batch, s, ex.cross_kv_in) if ex.cross_kv_in else None for _ in range(n)]

        def step() -> object:
            return model.expert(suffix, cache, cross)
    else:
        one = rnd(batch, 1, bb.hidden)
        cache = [(rnd(batch, bb.kv_heads, s, bb.head_dim), rnd(batch, bb.kv_heads, s, bb.head_dim)) for _ in range(n)]

        def step() -> object:
            return model.backbone(one, cache, head_last=True)

    steps = shape.denoise_steps if model.expert is not None else shape.decode_steps

    def full() -> object:
        out = prefix()
        for _ in range(steps):
            out = step()
        return out

    return full, prefix


# ---------------------------------------------------------------------------------------------------------------
# the benchmark

CPU_TIME_LIMIT_BYTES = 2 << 30  # on the CPU, time a shape by default only when its weights fit in 2 GiB


def _weight_bytes(shape: Shape, keep: Sequence[int], elsize: int) -> dict[str, int]:
    """Weight bytes one prefix forward and one step read (input embeddings excluded: a lookup)."""
    bb = tower_params(shape.backbone, keep)
    prefix = bb["blocks"] + bb["norm"] + bb["lm_head"]
    if shape.expert is not None:
        ex = tower_params(shape.expert, keep)
        step = ex["blocks"] + ex["norm"]
    else:
        step = prefix
    return {"prefix": prefix * elsize, "step": step * elsize}


def _query_roofline(counted: dict[str, Any], steps: int, wb: dict[str, int], peaks: Any) -> dict[str, Any]:
    """Roofline of a query: the prefix and each step are separate forwards, each bound on its own (a
    decode step can be memory bound after a compute-bound prefix), so their least times add."""
    from vlatrim.bench.roofline import roofline

    step_flops = (counted["full"] - counted["backbone"]) // steps if steps else 0
    p = roofline(counted["backbone"], wb["prefix"], peaks)
    s = roofline(step_flops, wb["step"], peaks) if steps else None
    total_bytes = wb["prefix"] + steps * wb["step"]
    return {"flops": counted["full"], "bytes_moved": total_bytes,
            "compute_ms": p["compute_ms"] + (steps * s["compute_ms"] if s else 0),
            "memory_ms": p["memory_ms"] + (steps * s["memory_ms"] if s else 0),
            "roofline_ms": p["roofline_ms"] + (steps * s["roofline_ms"] if s else 0),
            "bound": p["bound"] if s is None else f"prefix {p['bound']}, steps {s['bound']}",
            "arithmetic_intensity": counted["full"] / total_bytes, "step": s}


def bench_shape(shape: Shape, keep: Sequence[int], device: torch.device, dtype: torch.dtype, modes: Sequence[str],
                warmup: int, repeats: int, batch_size: int = 1, time: bool | None = None,
                remeasure_peaks: bool = False) -> dict[str, Any]:
    """One entry of bench.json's ``models`` for ``shape`` with layers ``keep`` (module docstring)."""
    from vlatrim.bench.flops import counted_flops
    from vlatrim.bench.roofline import get_peaks, peaks_entry, roofline, with_measured
    from vlatrim.bench.run import _control, _time_modes

    elsize = torch.empty((), dtype=dtype).element_size()
    params = shape_params(shape, keep)
    analytic = query_flops(shape, keep, batch_size)
    meta = build(shape, keep, "meta", dtype)
    meta.set_eager(True)  # counted on the meta device: no weights allocated
    full_m, prefix_m = forwards(meta, batch_size)
    counted = {"full": counted_flops(full_m)["total"], "backbone": counted_flops(prefix_m)["total"],
               "method": "torch.utils.flop_counter.FlopCounterMode on the meta device, matmul attention"}
    del meta
    wb = _weight_bytes(shape, keep, elsize)
    steps = analytic["steps"]
    if time is None:
        time = device.type == "cuda" or params["total"] * elsize <= CPU_TIME_LIMIT_BYTES
    if time:
        model = build(shape, keep, device, dtype)
        full, prefix = forwards(model, batch_size)
        with torch.no_grad():
            latency = {"full": _time_modes(full, modes, device, warmup, repeats),
                       "backbone": _time_modes(prefix, modes, device, warmup, repeats)}
        del model, full, prefix
    else:
        why = {"skipped": f"not timed: {params['total'] * elsize / 2**30:.1f} GiB of {str(dtype).replace('torch.', '')} "
                          f"weights on the {device.type} (give --time to time it)"}
        latency = {"full": {m: why for m in modes}, "backbone": {m: why for m in modes}}
    peaks, cached = get_peaks(device, dtype, remeasure=remeasure_peaks)
    n = shape.backbone.layers
    return {
        "path": None, "name": f"{shape.name} keep {len(keep)}/{n}", "class": "ShapeModel", "family": "shape",
        "shape": shape.name, "num_blocks": len(keep), "kept_blocks": list(keep),
        "prune": None if len(keep) == n else {"kept_blocks": list(keep), "source": shape.name,
                                              "backbone_ratio_removed": 1 - params["blocks"] / shape_params(shape, range(n))["blocks"]},
        "params": params, "weight_bytes": params["total"] * elsize, "dtype": str(dtype).replace("torch.", ""),
        "weights": "random (normal std 0.02, norms 1)" if time else "none (meta device)",
        "batch_size": batch_size,
        "sequence": {"tokens": shape.prefix_tokens, **{f"{k}_tokens": v for k, v in shape.prefix.items()},
                     "suffix_tokens": shape.suffix_tokens, "denoise_steps": shape.denoise_steps,
                     "decode_steps": shape.decode_steps, "chunk_size": shape.chunk_size},
        "flops": {"analytic_query": analytic, "counted": counted},
        "latency_ms": latency,
        "control": _control(latency["full"], shape.chunk_size, batch_size),
        "roofline": {"peaks": peaks_entry(peaks, cached),
                     "full": with_measured(_query_roofline(counted, steps, wb, peaks), latency["full"]),
                     "backbone": with_measured(roofline(counted["backbone"], wb["prefix"], peaks), latency["backbone"]),
                     "bytes_moved": "weights read once per forward: prefix + each decode / denoising step re-reads "
                                    "its tower (embeddings excluded: a lookup); activations and KV cache not counted",
                     "query": "full = prefix roofline + steps x step roofline (each forward bound on its own)"},
    }


def run_shape_bench(name: str, out: str | Any, device: str = "cpu", keep: int | None = None,
                    drop: Sequence[int] | None = None, batch_size: int = 1, compile: bool = False,
                    cuda_graphs: bool = False, warmup: int = 2, repeats: int = 5, time: bool | None = None,
                    dtype: str = "auto", threads: int | None = None, remeasure_peaks: bool = False) -> dict[str, Any]:
    """``vlatrim bench --shape NAME``: the full-depth shape and, with ``keep`` / ``drop``, the cut one
    (ratios relative to the full depth); writes ``<out>/bench.json``.

    Args:
        dtype: ``auto`` (bfloat16 on CUDA, float32 on the CPU), ``float32``, ``bfloat16`` or ``float16``.
        time: time the forwards; None: on CUDA always, on the CPU when the weights fit in 2 GiB.
        (the rest as ``vlatrim.bench.run.run_bench``)
    """
    import datetime as _dt
    import os
    from pathlib import Path

    from vlatrim.bench.run import BENCH_FILE, BENCH_SCHEMA_VERSION, _ratios, device_info
    from vlatrim.utils.device import resolve_device
    from vlatrim.utils.io import write_json_atomic

    shape = get_shape(name)
    cut = resolve_keep(shape, keep, drop)
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise VlatrimError(f"need --batch-size >= 1, --repeats >= 1, --warmup >= 0; got {batch_size}, {repeats}, {warmup}")
    dts = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype != "auto" and dtype not in dts:
        raise VlatrimError(f"--dtype must be auto or one of {', '.join(dts)}, got {dtype!r}")
    dev = resolve_device(device)
    dt = dts[dtype] if dtype != "auto" else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if threads is not None:
        torch.set_num_threads(threads)
    modes = ["eager"] + (["compile"] if compile else []) + (["cuda_graph"] if cuda_graphs else [])
    full = list(range(shape.backbone.layers))
    keeps = [full] + ([cut] if cut != full else [])
    entries = [bench_shape(shape, k, dev, dt, modes, warmup, repeats, batch_size, time, remeasure_peaks and i == 0)
               for i, k in enumerate(keeps)]
    _ratios(entries)
    notes = [f"random weights at real dimensions ({shape.description})"]
    if dev.type == "cpu":
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        notes.append(f"CPU run in {str(dt).replace('torch.', '')} (1-min load average {load1:.2f} at start on "
                     f"{os.cpu_count()} cores): other processes show up in CPU latency")
    result = {
        "schema_version": BENCH_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(dev),
        "settings": {"shape": name, "batch_size": batch_size, "modes": modes, "warmup": warmup, "repeats": repeats,
                     "dtype": str(dt).replace("torch.", ""), "time": time},
        "notes": notes,
        "models": entries,
    }
    write_json_atomic(Path(out) / BENCH_FILE, result)
    return result
