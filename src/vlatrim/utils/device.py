"""Device names users give (``--device``) to torch devices: the one place that decides."""

from __future__ import annotations

import torch

from vlatrim.errors import VlatrimError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (refused without CUDA).

    Raises:
        VlatrimError: an unknown name, or CUDA asked for on a machine without it.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise VlatrimError(f"--device {device!r} is not valid; valid: cpu, cuda, cuda:N, auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VlatrimError(f"--device {device!r} needs CUDA, which this machine lacks; valid here: cpu, auto")
    return torch.device(device)
