"""Open a model for inspection / analysis from what a user points at.

Accepted: a vlatrim checkpoint directory (``config.json`` with ``model_type: vlatrim_vla``), a local
transformers model directory (``config.json`` + safetensors weights), or a bare transformers config
(a ``config.json`` file, or a directory with no weights), which is built on the ``meta`` device: shapes
and parameter counts without allocating or initialising weights, so a 7B config inspects instantly.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.utils.io import read_json

VLATRIM_MODEL_TYPES = {"vlatrim_vla": ("vlatrim.models.reference", "ReferenceVLA")}
"""``config.json`` model_type of vlatrim's own checkpoints -> (module, class with ``from_pretrained``)."""


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors"))


def _transformers_class(config: object) -> type:
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type):
            return cls
    return transformers.AutoModel._model_mapping[type(config)]


def _from_config(config: object) -> nn.Module:
    cls = _transformers_class(config)
    with torch.device("meta"):
        return cls(config).eval()


def load_model(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, str]:
    """Open ``path`` as a model.

    Args:
        path: vlatrim checkpoint dir, transformers model dir, or transformers config JSON file.
        device: where real weights go.

    Returns:
        (model, kind) with kind ``"vlatrim"``, ``"transformers"`` or ``"config"`` (meta device, no weights).

    Raises:
        VlatrimError: the path does not exist or is none of the accepted forms.
    """
    from transformers import AutoConfig

    path = Path(path)
    if not path.exists():
        raise VlatrimError(f"model {str(path)!r} does not exist; give a checkpoint directory, a transformers "
                           f"model directory or a config.json")
    cfg_file = path / "config.json" if path.is_dir() else path
    raw = read_json(cfg_file, what="model config")
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise VlatrimError(f"model config {str(cfg_file)!r} has no 'model_type'; expected a transformers or "
                           f"vlatrim config.json")
    mtype = raw["model_type"]
    if mtype in VLATRIM_MODEL_TYPES:
        if not path.is_dir():
            raise VlatrimError(f"{str(path)!r} is a {mtype} config; point at its checkpoint directory instead")
        mod_name, cls_name = VLATRIM_MODEL_TYPES[mtype]
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except ModuleNotFoundError:
            raise VlatrimError(f"checkpoint {str(path)!r} is a {mtype} but {mod_name} is not installed") from None
        return cls.from_pretrained(path, device=device), "vlatrim"
    try:
        if path.is_dir():
            config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        else:
            config = AutoConfig.for_model(**raw)
    except (ValueError, KeyError, OSError) as e:
        raise VlatrimError(f"model config {str(cfg_file)!r} is not a transformers config this version knows "
                           f"({str(e).splitlines()[0][:200]})") from None
    if path.is_dir() and _has_weights(path):
        cls = _transformers_class(config)
        model = cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False)
        return model.to(device).eval(), "transformers"
    return _from_config(config), "config"

