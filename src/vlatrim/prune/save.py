"""Saving a pruned model as a standard checkpoint directory, and loading any checkpoint back.

Layout of a pruned directory: what the model's own ``save_pretrained`` writes (``config.json`` +
``model.safetensors``), every other file of the source directory's tree (tokenizer, processor,
normalisation stats, and the module folders other tools load with the model: sentence-transformers'
``modules.json`` + ``1_Pooling/`` ...), ``vocab_map.json`` when the vocabulary was cut, and
``prune.json``. Left out of the copy: what the cut replaces (the top-level config and weights,
``prune.json``), a training run's ``checkpoints/``, exports of the unpruned model (``onnx/``,
``openvino/``, ``*.onnx``) and hidden files. When a vocabulary cut rewrites the tokenizer, every
tokenizer file copied from the source speaks the old ids: they are removed, the rewritten tokenizer
is saved in each folder that held one, and a WordPiece ``vocab.txt`` is rewritten in the new id
order, so that every tokenizer file the directory keeps gives the pruned model's ids. A BPE / Unigram
tokenizer cannot be rewritten: its files move to ``original_tokenizer/`` (old ids), and
``load_tokenizer`` maps them through ``vocab_map.json``; no tokenizer file left beside the weights
speaks ids the model no longer has.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.models.adapters.load import VLATRIM_MODEL_TYPES
from vlatrim.models.checkpoint import refuse_pickled_weights
from vlatrim.prune.plan import PrunePlan
from vlatrim.prune.surgery import WIDTHS_KEY, SurgeryResult, _cut_block_width, _locate
from vlatrim.prune.vocab import RemappedTokenizer, TokenRemap
from vlatrim.utils.io import atomic_dir, read_json, write_json_atomic

VOCAB_MAP = "vocab_map.json"
ORIGINAL_TOKENIZER = "original_tokenizer"  # after a cut that could not rewrite the tokenizer: its files, old ids
PRUNE_JSON = "prune.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")
# Folders of a source tree that do not describe the pruned model: a training run's resumable state, and
# exports of the unpruned model.
_SKIPPED_DIRS = frozenset({"checkpoints", "onnx", "openvino"})
# Files of a tokenizer: after a vocabulary cut that rewrites it, copies of the source's speak old ids.
TOKENIZER_FILES = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                             "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                             "sentencepiece.bpe.model"})


def state_dict_sha256(model: nn.Module) -> str:
    """A hash of a model's tensors (names, shapes, dtypes, bytes), for models not loaded from a directory."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_pruned(result: SurgeryResult, out: str | Path, report: dict[str, Any], source_dir: str | Path | None = None,
                save_model: Callable[..., None] | None = None) -> Path:
    """Write the pruned model, its side files and ``prune.json`` into ``out`` atomically.

    Args:
        result: what ``apply_plan`` returned.
        out: output directory; it must not exist.
        report: the prune.json content (plan, parameters, source hash), written as is.
        source_dir: the source checkpoint directory, whose non-weight files are copied along.
        save_model: how the model writes itself (a policy family's ``save``, called as
            ``save_model(model, staging_dir, destination=out)``); default: its own ``save_pretrained``.
    Returns:
        ``out``.
    """
    out = Path(out)
    with atomic_dir(out) as tmp:
        copied = _copy_source_tree(Path(source_dir), tmp) if source_dir is not None else []
        stale_dirs: dict[Path, bool] = {}  # folder -> it held a vocab.txt
        if result.tokenizer is not None:  # the cut rewrote the tokenizer: every copied tokenizer file is stale
            for rel in copied:
                if rel.name in TOKENIZER_FILES:
                    stale_dirs[tmp / rel.parent] = stale_dirs.get(tmp / rel.parent, False) or rel.name == "vocab.txt"
                    (tmp / rel).unlink()
        elif result.remap is not None:
            # A BPE / Unigram tokenizer cannot be rewritten, and its files speak the old ids: a loader that
            # read them here would feed ids past the cut embedding. They move to original_tokenizer/, which
            # load_tokenizer() reads through vocab_map.json.
            for rel in copied:
                if rel.name in TOKENIZER_FILES:
                    dest = tmp / rel.parent / ORIGINAL_TOKENIZER / rel.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rel).rename(dest)
        if save_model is not None:
            save_model(result.model, tmp, destination=out)
        else:
            _save_model(result, tmp)
        if result.tokenizer is not None and not hasattr(result.model, "tokenizer"):
            result.tokenizer.save_pretrained(tmp)
        for folder, had_vocab_txt in stale_dirs.items():
            if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
                result.tokenizer.save_pretrained(folder)  # a folder whose tokenizer the model's save did not write
            if had_vocab_txt and not (folder / "vocab.txt").is_file():
                _write_vocab_txt(result.tokenizer, folder / "vocab.txt")
        if result.remap is not None:
            write_json_atomic(tmp / VOCAB_MAP, {**result.remap.to_json(), "tokenizer_rewritten": result.tokenizer is not None})
        write_json_atomic(tmp / PRUNE_JSON, report)
    return out


def _copy_source_tree(source: Path, tmp: Path) -> list[Path]:
    """Copy the source checkpoint's tree into ``tmp`` but for what the cut replaces or what does not
    describe the pruned model (module docstring); return the copied files' paths relative to ``tmp``."""
    copied: list[Path] = []
    for f in sorted(source.rglob("*")):
        rel = f.relative_to(source)
        if any(part.startswith(".") for part in rel.parts) or rel.parts[0] in _SKIPPED_DIRS:
            continue
        if f.is_dir():  # kept even when empty: a module folder may hold no file (sentence-transformers' Normalize)
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            continue
        if not f.is_file():
            continue
        if f.name.endswith(".onnx"):
            continue
        if len(rel.parts) == 1 and (f.name in ("config.json", PRUNE_JSON) or f.name.endswith(_WEIGHT_SUFFIXES)):
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, tmp / rel)
        copied.append(rel)
    return copied


def _write_vocab_txt(tokenizer: Any, path: Path) -> None:
    """A WordPiece ``vocab.txt`` of ``tokenizer``: one token per line, line i = id i (ids must be 0..n-1)."""
    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        return  # not a dense id range: no vocab.txt can express it (the rewritten tokenizer.json does)
    path.write_text("".join(t + "\n" for t, _ in by_id), encoding="utf-8")


def _save_model(result: SurgeryResult, tmp: Path) -> None:
    from transformers import PreTrainedModel

    if isinstance(result.model, PreTrainedModel):
        # A checkpoint that needs vlatrim's loader stores tensors under the model's own parameter names
        # (no legacy-key conversion), so the loader can read them with safetensors directly.
        result.model.save_pretrained(tmp, save_original_format=result.plain_reload)
    else:  # the reference VLA (or another vlatrim model): its own HF-style save, backbone config inside
        result.model.save_pretrained(tmp)


def _model_class(config_json: dict[str, Any]) -> type:
    import transformers

    archs = config_json.get("architectures") or []
    if not archs and isinstance(config_json.get("text_config"), dict):
        # transformers 4.x Qwen2-VL configs forward attribute writes to their text config, so save_pretrained's
        # ``architectures`` lands in text_config.
        archs = config_json["text_config"].get("architectures") or []
    for name in archs:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise VlatrimError(
        f"config.json names architectures {archs}; none is a transformers class this install knows "
        "(vlatrim never runs remote code)")


def narrow_to_recorded_widths(model: nn.Module, locate: Callable[[nn.Module], Any] = _locate) -> bool:
    """Cut a model freshly built from a pruned config down to the per-block widths recorded in its
    backbone config (``vlatrim_block_widths``), so the pruned weights load into it. Which rows are kept
    does not matter (the weights loaded next overwrite them); kept query heads are GQA-consistent (the
    first ``num_kv_heads`` groups, the first heads of each).

    Model builders that construct a backbone from a stored config (the reference VLA) call this
    between building and loading weights.

    Returns:
        True if the config recorded widths (and the model was cut), False if there was nothing to do.
    """
    h = locate(model)
    widths = getattr(h.config, WIDTHS_KEY, None)
    if not widths:
        return False
    heads, mlp = {}, {}
    for b, lay in enumerate(h.layouts):
        att = lay.attention
        nq, nkv = widths["num_heads"][b], widths["num_kv_heads"][b]
        if (nq, nkv) != (att.num_heads, att.num_kv_heads):
            g_old, g_new = att.num_heads // att.num_kv_heads, nq // nkv
            heads[b] = [k * g_old + j for k in range(nkv) for j in range(g_new)]
        if widths["intermediate_size"][b] != lay.mlp.intermediate_size:
            mlp[b] = list(range(widths["intermediate_size"][b]))
    plan = PrunePlan(heads=heads, mlp=mlp)
    for b in sorted(set(heads) | set(mlp)):
        _cut_block_width(h, b, plan)
    return True


def _load_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise VlatrimError(f"checkpoint {str(path)!r} has no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _legacy_keys_to_model_names(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensor names as ``model`` names its parameters. transformers 4.x writes some VLMs (LLaVA, PaliGemma)
    under their original names (``language_model.model.*``) whatever vlatrim asks, and maps them back on
    load with the class's ``_checkpoint_conversion_mapping``; this applies the same mapping. Names that
    are already the model's (transformers 5) are left alone."""
    import re

    mapping = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    own = set(model.state_dict())
    if not mapping or set(state) <= own:
        return state
    out = {}
    for key, value in state.items():
        new = key
        if key not in own:
            for pattern, replacement in mapping.items():
                new, n = re.subn(pattern, replacement, new)
                if n:
                    break
        out[new] = value
    return out


def load_pruned(path: str | Path, model_cls: type | None = None, locate: Callable[[nn.Module], Any] = _locate) -> nn.Module:
    """Load a checkpoint directory, pruned or not: the documented vlatrim loader.

    A checkpoint whose blocks share one width loads with the class's own ``from_pretrained``. One whose
    config holds ``vlatrim_block_widths`` (per-block widths, or widths the class's config cannot
    express) is built from its config, each block is cut to its recorded width, and the safetensors
    weights are loaded strictly.

    Args:
        path: checkpoint directory (``config.json`` + safetensors).
        model_cls: the class to load as; default: the first of ``config.json``'s ``architectures``.
        locate: the backbone locator.
    Returns:
        The model in eval mode.

    Raises:
        VlatrimError: the directory holds pickled weights only (never unpickled), or none this class reads.
    """
    path = Path(path)
    cfg_json = read_json(path / "config.json", "model config")
    refuse_pickled_weights(path)
    if model_cls is None and cfg_json.get("model_type") in VLATRIM_MODEL_TYPES:
        # The reference VLA: its own from_pretrained, told how to narrow blocks of recorded widths.
        mod_name, cls_name = VLATRIM_MODEL_TYPES[cfg_json["model_type"]]
        cls = getattr(importlib.import_module(mod_name), cls_name)
        return cls.from_pretrained(path, narrow=lambda m: narrow_to_recorded_widths(m, locate)).eval()
    cls = model_cls or _model_class(cfg_json)
    text_json = cfg_json.get("text_config") if isinstance(cfg_json.get("text_config"), dict) else {}
    if WIDTHS_KEY not in cfg_json and WIDTHS_KEY not in text_json:
        try:
            return cls.from_pretrained(path, use_safetensors=True, local_files_only=True).eval()
        except OSError as e:  # e.g. no model.safetensors
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise VlatrimError(f"checkpoint {str(path)!r} cannot be loaded ({first})") from None
    config = cls.config_class.from_pretrained(path)
    model = cls(config)
    narrow_to_recorded_widths(model, locate)
    h = locate(model)
    state = _legacy_keys_to_model_names(model, _load_safetensors_dir(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("weight") and h.lm_head_tied and h.lm_head_path and k.startswith(h.lm_head_path)}
    if unexpected or set(missing) - tied:
        raise VlatrimError(
            f"checkpoint {str(path)!r} does not match its recorded widths (missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})")
    if tied:
        model.get_submodule(h.lm_head_path).weight = model.get_submodule(h.embedding_path).weight
    return model.eval()


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a checkpoint directory; after a vocabulary cut, wrapped so its ids are the
    pruned model's (:class:`RemappedTokenizer`)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if (path / VOCAB_MAP).is_file():
        vmap = read_json(path / VOCAB_MAP, "vocabulary map")
        if not vmap.get("tokenizer_rewritten"):  # the original tokenizer, which speaks the old ids, mapped
            where = path / ORIGINAL_TOKENIZER if (path / ORIGINAL_TOKENIZER).is_dir() else path
            return RemappedTokenizer(AutoTokenizer.from_pretrained(where, local_files_only=True), TokenRemap.from_json(vmap))
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
