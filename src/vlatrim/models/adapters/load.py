"""Open a model for inspection / analysis from what a user points at.

Accepted: a vlatrim checkpoint directory (``config.json`` with ``model_type: vlatrim_vla``), a local
transformers model directory (``config.json`` + safetensors weights), or a bare transformers config
(a ``config.json`` file, or a directory with no weights), which is built on the ``meta`` device: shapes
and parameter counts without allocating or initialising weights, so a 7B config inspects instantly.

Remote code: a transformers directory may ship its own modeling code (``configuration_*.py`` /
``modeling_*.py`` named by ``auto_map`` in config.json, as OpenVLA does). vlatrim never runs it unless
asked (the ``trust_remote_code`` argument, set by the verbs' ``--trust-remote-code``); without that, such a model is
refused with one line naming the flag. Only code inside the directory runs: an ``auto_map`` entry that
points into another repository is refused (nothing is downloaded).
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
TRUST_FLAG = "--trust-remote-code"
# auto_map keys tried, in this order, for the model class when none matches config.json's architectures.
_MODEL_AUTO_KEYS = ("AutoModelForCausalLM", "AutoModelForVision2Seq", "AutoModelForImageTextToText", "AutoModel")


def _native_architecture(raw: dict) -> bool:
    import transformers

    return any(isinstance(getattr(transformers, a, None), type) for a in raw.get("architectures") or [])


def needs_remote_code(raw: dict) -> bool:
    """Whether config.json ``raw`` names modeling code of its own (``auto_map``) that this transformers install
    cannot replace with its own classes (model_type and architectures both known: transformers would use
    those, and so does vlatrim)."""
    from transformers import CONFIG_MAPPING

    if not isinstance(raw.get("auto_map"), dict) or not raw["auto_map"]:
        return False
    return not (raw.get("model_type") in CONFIG_MAPPING and _native_architecture(raw))


def _code_files(path: Path, raw: dict) -> list[str]:
    refs = [r for v in raw["auto_map"].values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    return sorted({r.split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs})


def check_remote_code(path: Path, raw: dict, trust_remote_code: bool) -> bool:
    """Refuse a model that ships its own code unless ``trust_remote_code``; True when its code is to run.

    Raises:
        VlatrimError: one line naming the code files and ``--trust-remote-code``; or, with the flag, an
            ``auto_map`` entry whose code is in another repository or missing from the directory.
    """
    if not needs_remote_code(raw):
        return False
    files = _code_files(path, raw)
    if not trust_remote_code:
        raise VlatrimError(f"{str(path)!r} ships its own modeling code ({', '.join(files)}, named by auto_map in "
                           f"config.json), and vlatrim runs no code from a model unless asked: add {TRUST_FLAG} "
                           "(inspect, analyze, prune) if you trust it")
    remote = [r for v in raw["auto_map"].values() for r in (v if isinstance(v, list) else [v])
              if isinstance(r, str) and "--" in r]
    if remote:
        raise VlatrimError(f"{str(path)!r}: auto_map names code in another repository ({remote[0]}), and vlatrim "
                           "downloads nothing; put that code into the model directory")
    base = path if path.is_dir() else path.parent
    missing = [f for f in files if not (base / f).is_file()]
    if missing:
        raise VlatrimError(f"{str(path)!r}: auto_map names {', '.join(missing)}, which the directory does not hold")
    return True


def remote_model_class(path: str | os.PathLike, raw: dict, trust_remote_code: bool = False) -> type | None:
    """The model class a directory's own code defines, or None when the model needs no code of its own.

    The class is the ``auto_map`` entry named like one of config.json's ``architectures`` (else the first of
    AutoModelForCausalLM, AutoModelForVision2Seq, AutoModelForImageTextToText, AutoModel). It and its config
    class are registered for their auto classes, so ``save_pretrained`` writes the code files and
    ``auto_map`` again (a pruned copy stays loadable the same way).

    Raises:
        VlatrimError: as ``check_remote_code``; or no ``auto_map`` entry names a model class.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    path = Path(path)
    if not check_remote_code(path, raw, trust_remote_code):
        return None
    auto_map = raw["auto_map"]
    entries = {k: v for k, v in auto_map.items() if isinstance(v, str) and k != "AutoConfig"}
    archs = raw.get("architectures") or []
    key = next((k for k, v in entries.items() if v.rsplit(".", 1)[-1] in archs), None) or \
        next((k for k in _MODEL_AUTO_KEYS if k in entries), None)
    if key is None:
        raise VlatrimError(f"{str(path)!r}: auto_map names no model class (it has {', '.join(auto_map)})")
    base = path if path.is_dir() else path.parent
    cls = get_class_from_dynamic_module(entries[key], str(base), local_files_only=True)
    cls.register_for_auto_class(key)
    config_cls = getattr(cls, "config_class", None)
    if isinstance(config_cls, type) and "AutoConfig" in auto_map and hasattr(config_cls, "register_for_auto_class"):
        config_cls.register_for_auto_class()
    return cls


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


def load_model(path: str | os.PathLike, device: str = "cpu", trust_remote_code: bool = False) -> tuple[nn.Module, str]:
    """Open ``path`` as a model.

    Args:
        path: vlatrim checkpoint dir, transformers model dir, or transformers config JSON file.
        device: where real weights go.
        trust_remote_code: run the modeling code a transformers directory ships (``auto_map``); without it
            such a model is refused.

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
    remote = remote_model_class(path, raw, trust_remote_code)
    if remote is not None:  # the directory's own classes (asked for)
        if path.is_dir() and _has_weights(path):
            model = remote.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
            return model.to(device).eval(), "transformers"
        config = remote.config_class.from_pretrained(str(path))
        with torch.device("meta"):
            return remote(config).eval(), "config"
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

