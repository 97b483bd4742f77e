"""HF-style checkpoint directories, read and written without pickle.

A checkpoint directory holds ``config.json`` (with ``model_type``), ``model.safetensors`` and any
extra JSON / tokenizer files of the model. Files are first written to a temporary sibling directory
and then moved in one by one with ``os.replace``; ``config.json`` moves last, so a directory with a
``config.json`` is always complete, and an interrupted save never leaves a loadable half-checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.utils.io import read_json, write_json_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # torch.save / pickle weight files


def refuse_pickled_weights(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Raise ``VlatrimError`` when directory ``path`` holds pickled weights (``pytorch_model.bin``, ...)
    but no safetensors: loading them would unpickle, which can run arbitrary code. The message says how
    to convert a trusted checkpoint once. A directory with safetensors, or with no weights, passes.
    """
    path = Path(path)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in path.iterdir() if f.is_file() and f.name.endswith(PICKLE_SUFFIXES))
    if not pickles:
        return
    cfg = path / CONFIG_FILE
    arch = "AutoModel"
    try:
        archs = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
        arch = archs[0] if archs and isinstance(archs[0], str) and archs[0].isidentifier() else arch
    except (OSError, ValueError, AttributeError):
        pass
    more = f" and {len(pickles) - 2} more" if len(pickles) > 2 else ""
    raise VlatrimError(
        f"{what} {str(path)!r} holds only pickled weights ({', '.join(pickles[:2])}{more}), which vlatrim does not "
        f"load (unpickling can run code); if you trust them, convert once to safetensors: python -c \"import "
        f"transformers as t; t.{arch}.from_pretrained({str(path)!r}).save_pretrained({str(path)!r})\"")


def write_checkpoint(path: str | os.PathLike, config: dict[str, Any], model: nn.Module,
                     extra_json: dict[str, Any] | None = None,
                     write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model``'s weights, ``config`` and extras into ``path`` (created if needed).

    Args:
        path: target directory; existing files of the same names are replaced.
        config: JSON-serialisable config; written as ``config.json``, last.
        model: module whose ``state_dict`` goes to ``model.safetensors`` (tied tensors stored once).
        extra_json: more files, ``{"name.json": data}``.
        write_extra: called with the staging directory to write other files (e.g. a tokenizer).

    Returns:
        ``path``.
    """
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_model(model, str(staging / WEIGHTS_FILE))
        for name, data in (extra_json or {}).items():
            write_json_atomic(staging / name, data)
        if write_extra is not None:
            write_extra(staging)
        write_json_atomic(staging / CONFIG_FILE, config)
        path.mkdir(parents=True, exist_ok=True)
        for f in sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_FILE):
            target = path / f.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(f, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def read_config(path: str | os.PathLike, model_type: str | None = None) -> dict[str, Any]:
    """``config.json`` of checkpoint ``path``, checked to be of ``model_type`` when given."""
    path = Path(path)
    if not path.is_dir():
        raise VlatrimError(f"checkpoint {str(path)!r} is not a directory")
    config = read_json(path / CONFIG_FILE, what="checkpoint config")
    if not isinstance(config, dict):
        raise VlatrimError(f"checkpoint config {str(path / CONFIG_FILE)!r} must be a JSON object")
    if model_type is not None and config.get("model_type") != model_type:
        raise VlatrimError(
            f"checkpoint {str(path)!r} has model_type {config.get('model_type')!r}; expected {model_type!r}")
    return config


def load_weights(path: str | os.PathLike, model: nn.Module, device: str | torch.device = "cpu") -> None:
    """Load ``model.safetensors`` of checkpoint ``path`` into ``model`` (strict, no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise VlatrimError(f"checkpoint weights {str(file)!r} do not exist")
    try:
        missing, unexpected = load_model(model, str(file), strict=False, device=str(device))
    except SafetensorError as e:
        raise VlatrimError(f"checkpoint weights {str(file)!r} are corrupted or not safetensors ({e})") from None
    except RuntimeError as e:  # shape mismatch inside load_state_dict
        msg = " ".join(str(e).split())[:300]
        raise VlatrimError(f"checkpoint weights {str(file)!r} do not fit the model its config.json builds ({msg})") from None
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or unexpected:
        raise VlatrimError(
            f"checkpoint weights {str(file)!r} do not fit the model its config.json builds: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
