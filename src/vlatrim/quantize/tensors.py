"""Quantized state dicts in safetensors, and the bytes tensors really take.

torchao's quantized weights are tensor subclasses (int8 data, scales, zero points); safetensors stores
plain tensors. The state dict is flattened with torchao's safetensors support (each quantized tensor
becomes its component tensors plus a JSON description in the file's metadata, restricted to torchao's
list of known tensor classes, so nothing is unpickled or imported by name from the file) and rebuilt on
load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlatrim.errors import VlatrimError
from vlatrim.quantize.schemes import _quiet_torchao


def _support() -> Any:
    with _quiet_torchao():
        try:
            from torchao.prototype.safetensors import safetensors_support
        except ImportError as e:
            raise VlatrimError(f"quantized checkpoints need torchao's safetensors support ({e}); "
                               "install a torchao with it: pip install 'vlatrim[quantize]'") from None
    return safetensors_support


def is_quantized_tensor(t: torch.Tensor) -> bool:
    """Whether ``t`` is a tensor subclass holding other tensors (a torchao quantized tensor)."""
    data = t.data if isinstance(t, torch.nn.Parameter) else t
    return type(data) is not torch.Tensor and hasattr(data, "__tensor_flatten__")


def _components(t: torch.Tensor) -> list[torch.Tensor]:
    data = t.data if isinstance(t, torch.nn.Parameter) else t
    if type(data) is torch.Tensor or not hasattr(data, "__tensor_flatten__"):
        return [data]
    names, _ = data.__tensor_flatten__()
    out: list[torch.Tensor] = []
    for n in names:
        out += _components(getattr(data, n))
    return out


def stored_nbytes(t: torch.Tensor) -> int:
    """Bytes ``t`` occupies: for a quantized tensor the sum of its int data, scales and zero points (not
    ``numel() * element_size()``, which reports its logical floating-point dtype)."""
    return sum(c.numel() * c.element_size() for c in _components(t))


def storage_key(t: torch.Tensor) -> int:
    """Where ``t``'s data lives (its first component's for a quantized tensor): equal for tied tensors."""
    return _components(t)[0].data_ptr()


def state_nbytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct parameters and buffers of ``model`` as stored (tied tensors once; a quantized
    tensor by its int data, scales and zero points)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if storage_key(t) not in seen:
            seen.add(storage_key(t))
            total += stored_nbytes(t)
    return total


def save_quantized_state(state: dict[str, torch.Tensor], file: Path) -> None:
    """Write ``state`` (plain and quantized tensors) to the safetensors ``file``: plain tensors under their
    names, quantized ones as torchao flattens them (components plus a metadata description)."""
    from safetensors.torch import save_file

    quantized = {k: v for k, v in state.items() if is_quantized_tensor(v)}
    flat, metadata = _support().flatten_tensor_state_dict(quantized)
    plain = {k: v for k, v in state.items() if k not in quantized}
    clash = set(plain) & set(flat)
    if clash:
        raise VlatrimError(f"tensor names {sorted(clash)[:2]} clash with quantized components; cannot save")
    save_file({k: v.contiguous() for k, v in {**plain, **flat}.items()}, str(file), metadata=metadata)


def load_quantized_state(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state dict ``save_quantized_state`` wrote, quantized tensors rebuilt.

    Raises:
        VlatrimError: the file is missing, not safetensors, or its quantization metadata is damaged or
            names a tensor class torchao does not allow.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    file = Path(file)
    if not file.is_file():
        raise VlatrimError(f"quantized weights {str(file)!r} do not exist")
    try:
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata() or {}
        flat = load_file(str(file), device=str(device))
    except (SafetensorError, OSError) as e:
        raise VlatrimError(f"quantized weights {str(file)!r} are corrupted or not safetensors ({e})") from None
    try:
        state, leftover = _support().unflatten_tensor_state_dict(flat, metadata)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        msg = " ".join(str(e).split())[:200]
        raise VlatrimError(f"quantized weights {str(file)!r} have damaged quantization metadata ({msg})") from None
    stray = sorted(k for k in leftover if "._" in k and k.rsplit("._", 1)[0] + "." + k.rsplit("._", 1)[1].split("_")[0]
                   in state)
    if stray:
        raise VlatrimError(f"quantized weights {str(file)!r} hold components their metadata does not describe "
                           f"(e.g. {stray[:2]})")
    return {**leftover, **state}  # the plain tensors are what the quantized ones did not claim
