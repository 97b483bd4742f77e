"""Carry out a PrunePlan on a located backbone, keeping the config true to the tensors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.prune.depth import check_drop, remove_blocks
from vlatrim.prune.ops import as_index
from vlatrim.prune.plan import PrunePlan
from vlatrim.prune.vocab import TokenRemap, cut_vocab
from vlatrim.prune.width import cut_attention_heads, cut_mlp_channels, set_attention_counts

log = logging.getLogger(__name__)

# Config key under which per-block widths are recorded when the model's own config cannot express them.
WIDTHS_KEY = "vlatrim_block_widths"


def _locate(model: nn.Module) -> Any:
    from vlatrim.models.adapters import locate_backbone  # the one locator (models package)

    return locate_backbone(model)


@dataclass
class SurgeryResult:
    """What a cut produced."""

    model: nn.Module  # the pruned model (the same object, cut in place; the base model if the LM head went)
    handle: Any  # BackboneHandle located again on the pruned model
    kept_blocks: list[int]  # original indices of the blocks that remain
    remap: TokenRemap | None = None  # token-id mapping when the vocabulary was cut
    plain_reload: bool = True  # the model's own from_pretrained rebuilds these shapes
    widths: dict[str, list[int]] = field(default_factory=dict)  # per-block num_heads / num_kv_heads / intermediate_size
    kept_by_path: dict[str, list[int]] = field(default_factory=dict)  # every cut block list -> original indices kept
    tokenizer: Any = None  # after a vocabulary cut: a rewritten tokenizer speaking the new ids (WordPiece), else None


def validate_plan(handle: Any, plan: PrunePlan) -> None:
    """Refuse a plan that cannot be carried out, before anything is cut (one-line VlatrimError)."""
    others = _other_block_lists(handle)
    for path, drop in plan.pathway_drops.items():
        if path not in others:
            raise VlatrimError(f"block list {path!r} is not a vision or action block list of this model; valid: "
                               f"{', '.join(sorted(others)) or '(none)'}")
        check_drop(drop, len(others[path]), f"{path} blocks")
    from vlatrim.prune.gqa import kv_heads_for

    n = handle.num_blocks
    check_drop(plan.drop_blocks, n)
    for b, heads in plan.heads.items():
        if not 0 <= b < n:
            raise VlatrimError(f"heads: block {b} out of range; valid: 0..{n - 1}")
        att = handle.layouts[b].attention
        if att is None:
            raise VlatrimError(f"heads: block {b} has no attention layout vlatrim can cut")
        idx = as_index(heads, att.num_heads, f"query heads of block {b}")
        kv_heads_for(idx, att.num_heads, att.num_kv_heads, f"heads of block {b}")
    for b, chans in plan.mlp.items():
        if not 0 <= b < n:
            raise VlatrimError(f"mlp: block {b} out of range; valid: 0..{n - 1}")
        mlp = handle.layouts[b].mlp
        if mlp is None:
            raise VlatrimError(f"mlp: block {b} has no MLP layout vlatrim can cut")
        as_index(chans, mlp.intermediate_size, f"MLP channels of block {b}")
        if mlp.kind == "plain" and len(set(chans)) == handle.hidden_size:
            # The adapters tell a plain MLP's up and down projections apart by their shapes; at width ==
            # hidden size both are square and the cut model could not be located again.
            raise VlatrimError(f"mlp: block {b} would keep exactly {handle.hidden_size} channels, the hidden size, "
                               f"which vlatrim cannot tell apart in a {type(handle.blocks[b]).__name__}; keep "
                               f"{handle.hidden_size - 1} or {handle.hidden_size + 1}")
    if plan.vocab is not None:
        if handle.embedding_path is None:
            raise VlatrimError("vocabulary: this model has no token embedding to shrink")
        as_index(plan.vocab, handle.vocab_size, "vocabulary")
    if plan.drop_lm_head:
        if handle.lm_head_path is None:
            raise VlatrimError("--drop-lm-head: this model has no LM head")
        if handle.owner_path != "" and handle.vision:
            raise VlatrimError("--drop-lm-head: only for text backbones used by a VLA with a regression head, not for a VLM whose head sits beside its vision tower")


def width_savings(handle: Any, plan: PrunePlan) -> list[int]:
    """Parameters the plan's head and channel cuts remove from each block, by arithmetic on the layouts
    (no cutting): a query head owns head_dim rows of q (+bias) and columns of o, a KV head head_dim rows
    of k and v (+biases), a channel one row of each input projection (+bias) and one column of down."""
    out = []
    d = handle.hidden_size
    for b, (blk, lay) in enumerate(zip(handle.blocks, handle.layouts)):
        saved = 0
        att, mlp = lay.attention, lay.mlp
        if b in plan.heads:
            g = att.num_heads // att.num_kv_heads
            rq = att.num_heads - len(plan.heads[b])
            rkv = att.num_kv_heads - len({q // g for q in plan.heads[b]})
            qb = int(blk.get_submodule(att.qkv or att.q).bias is not None)
            kb = int(blk.get_submodule(att.qkv or att.k).bias is not None)
            saved += rq * att.head_dim * (2 * d + qb) + rkv * att.head_dim * 2 * (d + kb)
        if b in plan.mlp:
            r = mlp.intermediate_size - len(plan.mlp[b])
            ins = [mlp.gate_up] if mlp.kind == "fused_gated" else [p for p in (mlp.up, mlp.gate) if p]
            per = sum((2 if mlp.kind == "fused_gated" else 1) * (d + int(blk.get_submodule(p).bias is not None)) for p in ins)
            saved += r * (per + d)
        out.append(saved)
    return out


def _cut_block_width(handle: Any, b: int, plan: PrunePlan) -> None:
    block, lay = handle.blocks[b], handle.layouts[b]
    sub = block.get_submodule
    if b in plan.heads:
        att = lay.attention
        keep_q = as_index(plan.heads[b], att.num_heads, f"query heads of block {b}")
        keep_kv = cut_attention_heads(
            o=sub(att.o), num_heads=att.num_heads, num_kv_heads=att.num_kv_heads, head_dim=att.head_dim,
            keep_q=keep_q, q=sub(att.q) if att.q else None, k=sub(att.k) if att.k else None,
            v=sub(att.v) if att.v else None, qkv=sub(att.qkv) if att.qkv else None, what=f"heads of block {b}",
        )
        set_attention_counts(sub(att.module) if att.module else block, len(keep_q), len(keep_kv), att.head_dim)
    if b in plan.mlp:
        mlp = lay.mlp
        keep = as_index(plan.mlp[b], mlp.intermediate_size, f"MLP channels of block {b}")
        if mlp.kind == "fused_gated":
            cut_mlp_channels(inputs=[], down=sub(mlp.down), keep=keep, fused_gate_up=sub(mlp.gate_up),
                             intermediate_size=mlp.intermediate_size)
        else:
            ins = [sub(mlp.up)] + ([sub(mlp.gate)] if mlp.gate else [])
            cut_mlp_channels(inputs=ins, down=sub(mlp.down), keep=keep)


def block_widths(handle: Any) -> dict[str, list[int]]:
    """Per-block head counts and MLP widths, read from the (located) tensors."""
    lays = handle.layouts
    return {
        "num_heads": [l.attention.num_heads for l in lays],
        "num_kv_heads": [l.attention.num_kv_heads for l in lays],
        "intermediate_size": [l.mlp.intermediate_size for l in lays],
    }


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _reproduces(fresh: dict[str, tuple[int, ...]] | None, live: dict[str, tuple[int, ...]], blocks_key: str) -> bool:
    """A model built from the config reproduces the live one: every live tensor exists with its shape,
    and nothing extra sits in the blocks (an extra module elsewhere, like a pooler the VLA dropped, is
    the class's own business)."""
    if fresh is None:
        return False
    if any(fresh.get(k) != v for k, v in live.items()):
        return False
    return not any(k.startswith(blocks_key) for k in set(fresh) - set(live))


def _fresh_shapes(owner: nn.Module, config: Any) -> dict[str, tuple[int, ...]] | None:
    """Shapes of a model built from ``config`` by the owner's own class (on the meta device: free)."""
    try:
        with torch.device("meta"):
            fresh = type(owner)(config)
    except Exception as e:  # the class refuses these widths (e.g. hidden size not divisible by heads)
        log.info("config cannot express the pruned widths: %s", e)
        return None
    return _shapes(fresh)


def write_width_config(handle: Any, before: dict[str, Any]) -> tuple[bool, dict[str, list[int]]]:
    """Record the blocks' widths in the config.

    Uniform widths go into the model's own fields (``num_attention_heads``, ``num_key_value_heads``,
    ``head_dim``, ``intermediate_size``) when its class, built from that config, reproduces every tensor
    shape; otherwise the fields keep their pre-cut values and ``config.vlatrim_block_widths`` lists the
    per-block widths for :func:`vlatrim.prune.load_pruned`.

    Returns:
        (plain_reload, widths).
    """
    cfg, widths = handle.config, block_widths(handle)
    head_dim = handle.layouts[0].attention.head_dim
    fields = {}
    if len(set(zip(widths["num_heads"], widths["num_kv_heads"]))) == 1:
        fields.update(num_attention_heads=widths["num_heads"][0], num_key_value_heads=widths["num_kv_heads"][0],
                      head_dim=head_dim)
    if len(set(widths["intermediate_size"])) == 1:
        fields["intermediate_size"] = widths["intermediate_size"][0]
    for k, v in fields.items():
        if k == "num_key_value_heads" and not hasattr(cfg, k):
            continue  # BERT-style configs have no KV field: equal to num_attention_heads by construction
        if k == "head_dim" and not hasattr(cfg, k) and v * widths["num_heads"][0] == handle.hidden_size:
            continue  # derived from hidden_size / heads, nothing to record
        cfg.__dict__[k] = v  # bypass per-field validation: the shape check below is the real test
    if hasattr(cfg, WIDTHS_KEY):
        del cfg.__dict__[WIDTHS_KEY]
    blocks_key = handle.blocks_path[len(handle.owner_path) + 1:] if handle.owner_path else handle.blocks_path
    plain = _reproduces(_fresh_shapes(handle.owner, cfg), _shapes(handle.owner), blocks_key + ".")
    if not plain:
        for k in fields:
            if k in before:
                cfg.__dict__[k] = before[k]
            else:
                cfg.__dict__.pop(k, None)
        cfg.__dict__[WIDTHS_KEY] = widths
    # Attention modules that got a private config copy while being cut point back at the shared one
    # whenever it now says the same thing.
    for blk, lay in zip(handle.blocks, handle.layouts):
        att = blk.get_submodule(lay.attention.module) if lay.attention.module else blk
        own = getattr(att, "config", None)
        if own is not None and own is not cfg and getattr(own, "num_attention_heads", None) == getattr(cfg, "num_attention_heads", None) \
                and getattr(own, "num_key_value_heads", None) == getattr(cfg, "num_key_value_heads", None):
            att.config = cfg
    return plain, widths


def _other_block_lists(handle: Any) -> dict[str, Any]:
    return {bl.path: bl for bl in [*handle.vision, *handle.action]}


def _cut_pathway_depth(model: nn.Module, path: str, drop: list[int]) -> list[int]:
    """Remove blocks of a vision / action block list; the nearest enclosing transformers config that
    counts exactly these blocks (``num_hidden_layers``) is made true (a policy family fixes its own
    fields in ``after_cut``). Returns the original indices kept."""
    blocks = model.get_submodule(path)
    n = len(blocks)
    configs = []
    parts = path.split(".")
    field = "num_hidden_layers"
    for i in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:i])) if i else model
        cfg = getattr(owner, "config", None)
        if cfg is None or not hasattr(cfg, "to_dict"):
            continue
        # Vision configs name their depth num_hidden_layers, or depth (Qwen2-VL's vision config in
        # transformers 4.x): whichever counts exactly these blocks is the one to keep true.
        hit = next((f for f in ("num_hidden_layers", "depth") if cfg.to_dict().get(f) == n), None)
        if hit is not None:
            configs.append(cfg)
            field = hit
            break
    return remove_blocks(blocks, configs, drop, num_layers_field=field)


def apply_plan(model: nn.Module, plan: PrunePlan, handle: Any | None = None,
               locate: Callable[[nn.Module], Any] = _locate) -> SurgeryResult:
    """Cut ``model`` in place as ``plan`` says: widths first (indices refer to the original blocks),
    then depth, then vocabulary; then write the config.

    Args:
        model: any model ``locate`` understands (reference VLA, transformers text model, VLM).
        plan: what to remove; validated in full before the first cut.
        handle: the model's BackboneHandle if already located.
        locate: the backbone locator (``vlatrim.models.adapters.locate_backbone``).
    Returns:
        A SurgeryResult whose ``handle`` describes the pruned model.
    """
    h = handle if handle is not None else locate(model)
    validate_plan(h, plan)
    cfg = h.config
    before = {k: getattr(cfg, k) for k in ("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")
              if hasattr(cfg, k)}
    dropped = set(plan.drop_blocks)
    for b in sorted(set(plan.heads) | set(plan.mlp)):
        if b not in dropped:  # no point cutting a block that goes
            _cut_block_width(h, b, plan)
    kept = remove_blocks(h.blocks, [cfg], plan.drop_blocks) if plan.drop_blocks else list(range(h.num_blocks))
    kept_by_path = {h.blocks_path: kept}
    for path, drop in sorted(plan.pathway_drops.items()):
        kept_by_path[path] = _cut_pathway_depth(model, path, drop)
    remap = None
    if plan.vocab is not None:
        emb = model.get_submodule(h.embedding_path)
        head = model.get_submodule(h.lm_head_path) if h.lm_head_path else None
        root_cfg = getattr(model, "config", None)
        remap = cut_vocab(emb, plan.vocab, [c for c in (cfg, root_cfg) if c is not None], lm_head=head, tied=h.lm_head_tied)
    if plan.drop_lm_head:
        model = h.owner  # the base model: blocks, embeddings and final norm, no head
    h = locate(model)
    plain, widths = write_width_config(h, before)
    return SurgeryResult(model=model, handle=h, kept_blocks=kept, remap=remap, plain_reload=plain, widths=widths,
                         kept_by_path=kept_by_path)
