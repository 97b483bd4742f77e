"""Quantization schemes, registered by name, each a recipe of torchao configs.

Every scheme quantizes the weights of all ``nn.Linear`` layers of the model (the language backbone, the
vision projector, the action head, ...) and stores every ``nn.Embedding`` table (word, position, token
type) as int8 rows with one scale each, since the embeddings of a small VLA's backbone hold as many
weights as its blocks; their lookups dequantize only the rows they read (``embedding``). Norms, biases and
convolutions stay in floating point.

- ``int8-weight``: int8 weights with one scale per output channel; matmuls dequantize (torchao's
  ``Int8WeightOnlyConfig``). Smallest checkpoint change for accuracy; runs on CPU and CUDA.
- ``int8-dynamic``: int8 weights and activations quantized per token at run time, int8 matmuls
  (``Int8DynamicActivationInt8WeightConfig``). CPU and CUDA.
- ``int4-weight``: int4 weights in groups of 128 input channels with bf16 scales
  (``Int4WeightOnlyConfig``); torchao runs it on CUDA only (the model is cast to bf16 first).

Whether a device can run a scheme is not taken on trust: ``runnable_schemes`` quantizes a small layer
with each scheme on the device and runs it. No scheme is trainable: torchao's inference tensors carry
no gradients, so recovery fine-tunes the float checkpoint and quantization comes after.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.registry import Registry

QUANT_KEY = "vlatrim_quantization"
"""The ``config.json`` entry of a quantized checkpoint: ``{"scheme", "library", "library_version", "modules"}``."""


@dataclass(frozen=True)
class QuantScheme:
    """One quantization scheme: which torchao configs it applies to linear and embedding layers.

    ``linear`` / ``embedding`` build the torchao config (called lazily, so torchao is imported only when
    a model is quantized); ``dtype`` is the floating-point dtype the model is cast to first (None: kept).
    ``min_in_features``: linear layers whose input width the scheme's group size does not divide are
    left in floating point (the modules actually quantized are recorded in the checkpoint).
    """

    name: str
    description: str
    linear: Callable[[], Any]
    embedding: Callable[[], Any]
    dtype: torch.dtype | None = None
    group_size: int = 1

    def quantizes(self, module: nn.Module) -> bool:
        """Whether this scheme quantizes ``module``."""
        if isinstance(module, nn.Linear):
            return module.in_features % self.group_size == 0
        return isinstance(module, nn.Embedding)


SCHEMES: Registry[QuantScheme] = Registry("quantization scheme")


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    # torchao logs, at import, each optional GPU kernel library it could not load and torch's notice about
    # torchao's enum registrations: neither concerns a vlatrim user, and they would land mid-progress-bar.
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def torchao() -> Any:
    """The ``torchao.quantization`` module (imported quietly), or VlatrimError saying how to install it."""
    with _quiet_torchao():
        try:
            import torchao.quantization as q
        except ImportError as e:
            raise VlatrimError(f"quantization needs torchao ({e}); install it with: pip install 'vlatrim[quantize]'") from None
    return q


def _int8_rows() -> Any:
    q = torchao()
    from torchao.quantization.granularity import PerAxis

    return q.IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))


def _register(scheme: QuantScheme) -> None:
    SCHEMES.register(scheme.name)(scheme)


_register(QuantScheme("int8-weight", "int8 weights, one scale per output channel; float activations",
                      lambda: torchao().Int8WeightOnlyConfig(), _int8_rows))
_register(QuantScheme("int8-dynamic", "int8 weights and per-token dynamic int8 activations",
                      lambda: torchao().Int8DynamicActivationInt8WeightConfig(), _int8_rows))
_register(QuantScheme("int4-weight", "int4 weights in groups of 128 with bf16 scales (CUDA)",
                      lambda: torchao().Int4WeightOnlyConfig(group_size=128), _int8_rows,
                      dtype=torch.bfloat16, group_size=128))


def apply_scheme(model: nn.Module, scheme: QuantScheme | str) -> list[str]:
    """Quantize ``model`` in place with ``scheme``; returns the names of the modules quantized (sorted).

    Tied weights (an LM head sharing the word embeddings) are untied first: the embedding table and the
    head are quantized as their layers are used (rows vs. output channels).

    Raises:
        VlatrimError: the scheme is unknown, or torchao cannot apply it to this model on its device.
    """
    scheme = SCHEMES.get(scheme) if isinstance(scheme, str) else scheme
    q = torchao()
    if scheme.dtype is not None:
        model.to(scheme.dtype)
    names = sorted(n for n, m in model.named_modules() if scheme.quantizes(m))
    if not names:
        raise VlatrimError(f"the model has no linear or embedding layer that {scheme.name} can quantize")
    wanted = set(names)
    seen: dict[int, str] = {}
    for name in names:  # untie: one Parameter object may be quantized once only
        mod = model.get_submodule(name)
        if id(mod.weight) in seen:
            mod.weight = nn.Parameter(mod.weight.detach().clone(), requires_grad=False)
        seen[id(mod.weight)] = name
    try:
        with _quiet_torchao():
            q.quantize_(model, scheme.embedding(), filter_fn=lambda m, fqn: isinstance(m, nn.Embedding) and fqn in wanted)
            q.quantize_(model, scheme.linear(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in wanted)
    except (RuntimeError, NotImplementedError, ImportError, AssertionError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise VlatrimError(f"torchao cannot apply {scheme.name} to this model ({type(e).__name__}: {first})") from None
    from vlatrim.quantize.embedding import gather_first_lookups

    gather_first_lookups(model)
    return names


def _probe(scheme: QuantScheme, device: torch.device) -> bool:
    # A small embedding + linear pair, quantized and run on the device: what the scheme needs (kernels,
    # dtypes, optional libraries) is there exactly when this works.
    model = nn.Sequential(nn.Embedding(8, 256), nn.Linear(256, 256)).to(device)
    try:
        apply_scheme(model, scheme)
        with torch.no_grad():
            out = model(torch.arange(4, device=device).unsqueeze(0))
        return bool(torch.isfinite(out.float()).all())
    except Exception:  # noqa: BLE001  (any failure means: not runnable here)
        return False


def runnable_schemes(device: torch.device | str) -> list[str]:
    """The schemes that quantize and run a small layer on ``device`` (checked now, in this process)."""
    return [n for n in SCHEMES.names() if _runs(SCHEMES.get(n), torch.device(device))]


def _runs(scheme: QuantScheme, device: torch.device) -> bool:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _probe(scheme, device)


def check_runnable(scheme: str, device: torch.device | str) -> QuantScheme:
    """The scheme called ``scheme`` if ``device`` can run it; otherwise VlatrimError naming those it can."""
    chosen, device = SCHEMES.get(scheme), torch.device(device)
    if _runs(chosen, device):
        return chosen
    ok = [n for n in SCHEMES.names() if n != chosen.name and _runs(SCHEMES.get(n), device)]
    raise VlatrimError(f"--scheme {scheme} cannot run on {device} here (torchao has no kernel for it on this "
                       f"device); schemes this device runs: {', '.join(ok) or '(none)'}")
