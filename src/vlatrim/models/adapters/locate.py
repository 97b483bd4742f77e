"""Find the language backbone (and the vision / action block lists) inside a model, by structure.

The rules, in order:
1. A *block list* is an ``nn.ModuleList`` of same-typed modules in which an attention layout and an
   MLP layout can be read (``rules.py``). Lists nested inside another block list are not separate.
2. A block list is *textual* when its nearest ancestor carrying a config with ``vocab_size`` returns an
   ``nn.Embedding`` from ``get_input_embeddings()``: that ancestor is the backbone's *owner* (LlamaModel,
   BertModel, Idefics3's text_model, ...). The language backbone is the textual list with the most
   parameters (in pi0 / SmolVLA the VLM's language model outweighs the action expert).
3. Every other block list belongs to the *component* that holds it: its highest ancestor that does not
   also hold the backbone. A component with a 2-D/3-D convolution (a patch embedding) is the vision
   pathway (failing that, a component named like one: vision/visual/image/vit/...); any other is the
   action pathway (action head, action expert).
Nothing here knows a model class name, so a VLA that keeps a transformers model as a plain attribute
(``vla.backbone``) is found like any other.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.models.adapters.layout import BackboneHandle, BlockLayout, BlockList
from vlatrim.models.adapters.rules import parse_attention, parse_mlp
from vlatrim.models.params import count_params


def _parent_paths(path: str) -> list[str]:
    """Ancestors of a dotted path, nearest first, ending with the root ("")."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)] + [""]


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _config_of(block: nn.Module) -> Any:
    for _, m in block.named_modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            return cfg
    return None


def _layouts(root_path: str, blocks: nn.ModuleList, config: Any) -> list[BlockLayout] | None:
    out = []
    for i, block in enumerate(blocks):
        cfg = config if config is not None else _config_of(block)
        attn = parse_attention(block, cfg)
        mlp = parse_mlp(block, cfg, attn)
        if attn is None or mlp is None:
            return None
        out.append(BlockLayout(index=i, path=f"{root_path}.{i}", num_params=count_params(block), attention=attn, mlp=mlp))
    return out


def find_block_lists(root: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ModuleList of residual blocks in ``root`` (outermost only), in module order."""
    found: list[tuple[str, nn.ModuleList]] = []
    for path, mod in root.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if any(path.startswith(p + ".") for p, _ in found):
            continue
        if len({type(b) for b in mod}) != 1:
            continue
        first = mod[0]
        attn = parse_attention(first, _config_of(first))
        if attn is not None and parse_mlp(first, _config_of(first), attn) is not None:
            found.append((path, mod))
    return found


def _text_owner(root: nn.Module, blocks_path: str) -> tuple[str, nn.Module] | None:
    """Nearest ancestor that owns a text config and a token embedding."""
    for p in _parent_paths(blocks_path):
        m = _get(root, p)
        cfg = getattr(m, "config", None)
        if cfg is None or not isinstance(getattr(cfg, "vocab_size", None), int):
            continue
        get_emb = getattr(m, "get_input_embeddings", None)
        try:
            emb = get_emb() if callable(get_emb) else None
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Embedding):
            return p, m
    return None


def _path_of(root: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    for p, m in root.named_modules():
        if m is target:
            return p
    return None


def _component(root: nn.Module, list_path: str, backbone_path: str) -> str:
    """Highest ancestor of ``list_path`` that does not also contain the backbone blocks."""
    best = list_path
    for p in _parent_paths(list_path):
        if p == "" or backbone_path.startswith(p + "."):
            break
        best = p
    return best


_VISION_WORDS = ("vision", "visual", "image", "img", "vit", "patch", "siglip", "clip", "camera")


def _is_vision(module: nn.Module, path: str) -> bool:
    """A component is visual when it holds a 2-D/3-D convolution (a patch embedding); when the stem sits
    outside it (a VLA whose conv stem and vision transformer are sibling attributes), its name decides."""
    if any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in module.modules()):
        return True
    return any(w in part.lower() for part in path.split(".") for w in _VISION_WORDS)


def _describe_lists(root: nn.Module) -> str:
    lists = [(p, m) for p, m in root.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return "no nn.ModuleList at all"
    shown = ", ".join(f"{p} ({len(m)} x {type(m[0]).__name__})" for p, m in lists[:6])
    return "ModuleLists found: " + shown + (f", ... ({len(lists)} in all)" if len(lists) > 6 else "")


def locate_backbone(model: nn.Module, blocks_path: str | None = None) -> BackboneHandle:
    """Locate the language backbone of ``model`` and its vision / action block lists.

    Args:
        model: a transformers text model or VLM, the reference VLA, or any module holding one.
        blocks_path: dotted path of the backbone's block ModuleList, to override detection
            (e.g. ``"backbone.encoder.layer"``); each block in it must still have a readable layout.

    Returns:
        A ``BackboneHandle`` (see ``layout.py``).

    Raises:
        VlatrimError: no textual block list was found (the message lists the ModuleLists that exist and
            how to pass ``blocks_path``), or ``blocks_path`` does not name a usable block list.
    """
    lists = find_block_lists(model)
    if blocks_path is not None:
        try:
            blocks = model.get_submodule(blocks_path)
        except AttributeError:
            raise VlatrimError(f"blocks_path {blocks_path!r} does not exist in {type(model).__name__}; "
                               f"{_describe_lists(model)}") from None
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise VlatrimError(f"blocks_path {blocks_path!r} is a {type(blocks).__name__}, not a non-empty "
                               f"nn.ModuleList of blocks; {_describe_lists(model)}")
        owner_hit = _text_owner(model, blocks_path)
    else:
        textual = [(p, m, _text_owner(model, p)) for p, m in lists]
        textual = [t for t in textual if t[2] is not None]
        if not textual:
            raise VlatrimError(
                f"no language backbone found in {type(model).__name__}: no block list with attention + MLP "
                f"under a module with a token embedding; {_describe_lists(model)}; point the tool at the "
                f"block list with blocks_path='dotted.path' (CLI: --blocks-path)"
            )
        blocks_path, blocks, owner_hit = max(textual, key=lambda t: (count_params(t[1]), -len(t[0])))
    owner_path, owner = owner_hit if owner_hit else ("", model)
    config = getattr(owner, "config", None) if owner_hit else _config_of(blocks[0])
    layouts = _layouts(blocks_path, blocks, config)
    if layouts is None:
        bad = next(i for i, b in enumerate(blocks) if parse_attention(b, config) is None or parse_mlp(b, config, parse_attention(b, config)) is None)
        raise VlatrimError(
            f"block {blocks_path}.{bad} ({type(blocks[bad]).__name__}) has no recognisable attention "
            f"(q/k/v/o or fused qkv Linears) and MLP (gate/up/down, gate_up/down or up/down Linears); "
            f"{_describe_lists(model)}"
        )

    emb = None
    if owner_hit:
        emb = owner.get_input_embeddings()
    embedding_path = _path_of(model, emb)
    vocab = emb.num_embeddings if isinstance(emb, nn.Embedding) else getattr(config, "vocab_size", None)
    hidden = model.get_submodule(layouts[0].path).get_submodule(layouts[0].attention.o).out_features

    lm_head = None
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            lm_head = get_out()
        except (NotImplementedError, AttributeError):
            lm_head = None
    if not isinstance(lm_head, nn.Linear) and vocab is not None:
        # A VLA that decodes discrete tokens keeps its own vocabulary projection: a Linear hidden -> vocab
        # outside the blocks.
        lm_head = next((m for p, m in model.named_modules() if isinstance(m, nn.Linear)
                        and not p.startswith(blocks_path + ".") and m.in_features == hidden
                        and m.out_features == vocab), None)
    lm_head_path = _path_of(model, lm_head) if isinstance(lm_head, nn.Linear) else None
    tied = bool(lm_head_path and emb is not None and lm_head.weight is emb.weight)

    attn0 = blocks[0].get_submodule(layouts[0].attention.module) if layouts[0].attention.module else blocks[0]
    causal = getattr(attn0, "is_causal", None)
    causal = bool(causal) if isinstance(causal, bool) else bool(getattr(config, "is_decoder", False))
    # A decoder family whose config switches the mask to bidirectional (PaliGemma's prefix-LM Gemma) is
    # still a decoder; only its mask changed.
    is_decoder = causal or bool(getattr(config, "use_bidirectional_attention", False))

    vision, action = [], []
    for p, m in lists:
        if p == blocks_path or p.startswith(blocks_path + "."):
            continue
        comp = _component(model, p, blocks_path)
        kind = "vision" if _is_vision(_get(model, comp), comp) else "action"
        lay = _layouts(p, m, None) or []
        (vision if kind == "vision" else action).append(BlockList(p, kind, m, lay, comp))

    return BackboneHandle(
        root=model, owner=owner, owner_path=owner_path, config=config, blocks_path=blocks_path, blocks=blocks,
        layouts=layouts, hidden_size=hidden, vocab_size=vocab, embedding_path=embedding_path,
        lm_head_path=lm_head_path, lm_head_tied=tied, is_decoder=is_decoder, causal=causal, vision=vision, action=action,
    )
