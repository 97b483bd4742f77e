"""Quantized checkpoints of any policy family: written by ``quantize_checkpoint``, read by every verb.

A quantized checkpoint directory is the float checkpoint as its family saves it (config, tokenizer,
processors, ...) with two changes:

- ``model.safetensors`` holds torchao's quantized tensors (int8 / int4 data, scales, zero points,
  described in the file's metadata; ``vlatrim.quantize.tensors``) and the tensors left in floating point;
- ``config.json`` records the scheme under ``vlatrim_quantization``: ``{"scheme", "library",
  "library_version", "modules"}`` (the modules quantized).

``family_of`` answers such a directory with its float family wrapped by ``quantized_family``: loading
builds the float model from the dequantized weights (the family's own loader, so pruned per-block
widths and tokenizers come back as they were) and then puts the stored quantized tensors in place,
exactly. The wrapped family acts, evaluates and benches like its float family; it cannot be analysed,
pruned or recovered (``read_only`` says why and what to do instead).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.families.base import PolicyFamily, family_of, read_config
from vlatrim.quantize import (
    QUANT_KEY,
    apply_scheme,
    gather_first_lookups,
    is_quantized_tensor,
    load_quantized_state,
    save_quantized_state,
    state_nbytes,
)
from vlatrim.quantize.schemes import SCHEMES, check_runnable

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _weight_files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and (f.name.endswith(".safetensors")
                                                               or f.name.endswith(".safetensors.index.json")))


class QuantizedMixin:
    """What a quantized checkpoint changes in its float family (see the module docstring)."""

    quantization: dict[str, Any]
    read_only = ("it is quantized ({scheme}); torchao's quantized weights carry no gradients and cannot be cut, so "
                 "analyse, prune and recover the float checkpoint, then run `vlatrim quantize` on the result")
    recovery_methods: tuple[str, ...] = ()

    def refusal(self) -> str:
        """Why this checkpoint cannot be analysed, pruned or recovered."""
        return self.read_only.format(scheme=self.quantization.get("scheme"))

    def load(self, path: Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> nn.Module:
        path = Path(path)
        raw = read_config(path)
        entry = raw.get(QUANT_KEY)
        scheme = SCHEMES.get(entry.get("scheme")) if isinstance(entry, dict) else None
        if scheme is None:
            raise VlatrimError(f"{str(path / CONFIG)!r} has a damaged {QUANT_KEY!r} entry (no scheme)")
        state = load_quantized_state(path / WEIGHTS)
        float_state = {k: (v.dequantize() if is_quantized_tensor(v) else v) for k, v in state.items()}
        with tempfile.TemporaryDirectory(prefix=".vlatrim-dequantized-") as tmp:
            # The family's own loader on the same directory with float weights: every file but the
            # weights is linked, config.json is written without the quantization entry.
            from safetensors.torch import save_file

            tmp_dir = Path(tmp)
            for f in path.iterdir():
                if f.name != CONFIG and f not in _weight_files(path):
                    os.symlink(f.resolve(), tmp_dir / f.name)
            (tmp_dir / CONFIG).write_text(json.dumps({k: v for k, v in raw.items() if k != QUANT_KEY}), encoding="utf-8")
            save_file({k: v.contiguous() for k, v in float_state.items()}, str(tmp_dir / WEIGHTS))
            model = super().load(tmp_dir, device="cpu", trust_remote_code=trust_remote_code)  # type: ignore[misc]
        if scheme.dtype is not None:
            model.to(scheme.dtype)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        quantized = {k for k, v in state.items() if is_quantized_tensor(v)}
        if unexpected or quantized & set(missing):
            raise VlatrimError(f"quantized weights of {str(path)!r} do not fit the model its config.json builds "
                               f"(missing {sorted(missing)[:2]}, unexpected {sorted(unexpected)[:2]})")
        for p in model.parameters():
            p.requires_grad_(False)
        gather_first_lookups(model)
        model.vlatrim_quantization = dict(entry)
        return model.to(device).eval()

    def save(self, model: nn.Module, out: Path, destination: Path | None = None) -> None:
        raise VlatrimError(f"a quantized {self.name} model is written by `vlatrim quantize` from its float checkpoint, "
                           "not saved again")

    def trainable(self, model: nn.Module, method: str) -> list[str]:
        raise VlatrimError(f"this checkpoint cannot be fine-tuned: {self.refusal()}")


@functools.cache
def _quantized_class(base: type[PolicyFamily]) -> type[PolicyFamily]:
    return type(f"Quantized{base.__name__}", (QuantizedMixin, base),
                {"name": base.name, "__doc__": f"A quantized checkpoint of the {base.name} family."})


def quantized_family(base: PolicyFamily, entry: Any) -> PolicyFamily:
    """``base`` for a checkpoint whose config.json holds the quantization ``entry``."""
    if not isinstance(entry, dict) or entry.get("scheme") not in SCHEMES.names():
        raise VlatrimError(f"config.json's {QUANT_KEY!r} entry must name a scheme ({', '.join(SCHEMES.names())}); "
                           f"it is {json.dumps(entry)[:80]}")
    fam = _quantized_class(type(base))()
    fam.quantization = dict(entry)
    return fam


def quantize_checkpoint(model: str | Path, scheme: str, out: str | Path, device: str = "cpu",
                        trust_remote_code: bool = False) -> dict[str, Any]:
    """Quantize the checkpoint ``model`` with ``scheme`` into the new directory ``out``.

    The float model is loaded by its family, saved into a staging directory beside ``out`` (the family's
    own files), quantized with torchao, and its weights replaced by the quantized ones; ``out`` appears
    only when everything is written. ``quantize.json`` in ``out`` gives the bytes before and after.

    Raises:
        VlatrimError: ``out`` exists, ``model`` is already quantized or not a checkpoint, or ``device``
            cannot run ``scheme`` (the message lists the schemes it can); nothing is written.
    """
    from vlatrim.utils.device import resolve_device
    from vlatrim.utils.io import check_name_lengths, write_json_atomic

    src, out = Path(model), Path(out)
    check_name_lengths(out)
    if out.exists():
        raise VlatrimError(f"--out {str(out)!r} already exists; choose a new directory or remove it")
    family = family_of(src)
    if isinstance(family, QuantizedMixin):
        raise VlatrimError(f"checkpoint {str(src)!r} is already quantized ({family.quantization.get('scheme')}); "
                           "quantize its float checkpoint instead")
    dev = resolve_device(device)
    chosen = check_runnable(scheme, dev)
    float_model = family.load(src, device=dev, trust_remote_code=trust_remote_code)
    before = state_nbytes(float_model)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise VlatrimError(f"--out {str(out)!r} cannot be written ({e.strerror or e})") from None
    try:
        family.save(float_model, staging, destination=out)
        float_file_bytes = sum(f.stat().st_size for f in _weight_files(staging))
        modules = apply_scheme(float_model, chosen)
        for f in _weight_files(staging):
            f.unlink()
        save_quantized_state(float_model.state_dict(), staging / WEIGHTS)
        import torchao

        raw = read_config(staging)
        raw[QUANT_KEY] = {"scheme": chosen.name, "library": "torchao", "library_version": torchao.__version__,
                          "modules": modules}
        write_json_atomic(staging / CONFIG, raw)
        after = state_nbytes(float_model)
        report = {
            "source": str(src), "family": family.name, "scheme": chosen.name, "description": chosen.description,
            "device": str(dev), "modules_quantized": len(modules),
            "bytes": {"before": before, "after": after, "ratio": after / before},
            "file_bytes": {"before": float_file_bytes, "after": (staging / WEIGHTS).stat().st_size,
                           "ratio": (staging / WEIGHTS).stat().st_size / max(float_file_bytes, 1)},
        }
        write_json_atomic(staging / "quantize.json", report)
        try:
            os.replace(staging, out)
        except OSError as e:  # e.g. a name longer than the file system takes
            raise VlatrimError(f"--out {str(out)!r} cannot be written ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
