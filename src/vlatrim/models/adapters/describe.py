"""A JSON-ready description of what the adapters see in a model (``vlatrim inspect``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from vlatrim.models.adapters.layout import BackboneHandle, BlockList
from vlatrim.models.params import count_params


def components(handle: BackboneHandle) -> dict[str, dict[str, Any]]:
    """Parameters per component: backbone (blocks / embeddings / rest), LM head, vision, action, other.

    "Other" components are the largest modules holding none of the above (projector, action
    head layers outside block lists, state encoders, ...), each reported by its path.
    """
    root = handle.root
    out: dict[str, dict[str, Any]] = {}
    emb = root.get_submodule(handle.embedding_path) if handle.embedding_path else None
    blocks_n = count_params(handle.blocks)
    emb_n = count_params(emb) if emb is not None else 0
    lm = root.get_submodule(handle.lm_head_path) if handle.lm_head_path else None
    # When the backbone is the root itself (a bare BertModel), everything but an untied LM head is it.
    lm_ids = {id(p) for p in lm.parameters()} if lm is not None and not handle.lm_head_tied else set()
    owner_n = count_params(handle.owner, exclude=lm_ids if handle.owner is root else None)
    out["backbone"] = {"path": handle.owner_path, "params": owner_n, "blocks": blocks_n, "embeddings": emb_n,
                       "other": owner_n - blocks_n - emb_n}
    claimed: dict[str, nn.Module] = {handle.owner_path: handle.owner}
    if lm is not None and not handle.lm_head_path.startswith(handle.owner_path + "."):
        out["lm_head"] = {"path": handle.lm_head_path, "params": 0 if handle.lm_head_tied else count_params(lm),
                          "tied": handle.lm_head_tied}
        claimed[handle.lm_head_path] = lm
    for kind, lists in (("vision", handle.vision), ("action", handle.action)):
        comps = sorted({bl.component_path for bl in lists})
        for c in comps:
            claimed[c] = root.get_submodule(c)
        if comps:
            out[kind] = {"paths": comps, "params": sum(count_params(root.get_submodule(c)) for c in comps),
                         "blocks": sum(count_params(bl.modules) for bl in lists)}
    seen = {id(p) for m in claimed.values() for p in m.parameters()}
    other: dict[str, int] = {}

    def walk(mod: nn.Module, path: str) -> None:
        if path in claimed and path != "":
            return
        if path != "" and not any(c.startswith(path + ".") for c in claimed):
            n = count_params(mod, exclude=seen)
            if n:
                other[path] = n
            return
        own = sum(p.numel() for p in mod.parameters(recurse=False) if id(p) not in seen)
        if own:
            other[path or "(root)"] = own
        for name, child in mod.named_children():
            walk(child, f"{path}.{name}" if path else name)

    if handle.owner is not root:
        walk(root, "")
    out["other"] = {"params": sum(other.values()), "modules": other}
    out["total"] = {"params": count_params(root)}
    return out


def _block_list_json(bl: BlockList) -> dict[str, Any]:
    return {"path": bl.path, "component": bl.component_path, "num_blocks": len(bl),
            "params": count_params(bl.modules), "blocks": [_layout_json(x) for x in bl.layouts]}


def _layout_json(x: Any) -> dict[str, Any]:
    d = dataclasses.asdict(x)
    if x.attention is not None:
        d["attention"]["kv_groups"] = x.attention.kv_groups
    return d


def describe(handle: BackboneHandle) -> dict[str, Any]:
    """Everything ``inspect.json`` holds: root class, backbone location and layout, pathways, params."""
    cfg = handle.config
    return {
        "model_class": type(handle.root).__name__,
        "backbone": {
            "owner_path": handle.owner_path,
            "owner_class": type(handle.owner).__name__,
            "config_class": type(cfg).__name__ if cfg is not None else None,
            "model_type": getattr(cfg, "model_type", None),
            "blocks_path": handle.blocks_path,
            "num_blocks": handle.num_blocks,
            "block_class": type(handle.blocks[0]).__name__,
            "is_decoder": handle.is_decoder,
            "causal": handle.causal,
            "hidden_size": handle.hidden_size,
            "vocab_size": handle.vocab_size,
            "embedding_path": handle.embedding_path,
            "lm_head_path": handle.lm_head_path,
            "lm_head_tied": handle.lm_head_tied,
            "blocks": [_layout_json(x) for x in handle.layouts],
        },
        "vision": [_block_list_json(bl) for bl in handle.vision],
        "action": [_block_list_json(bl) for bl in handle.action],
        "components": components(handle),
    }


def summary_text(info: dict[str, Any]) -> str:
    """A readable multi-line summary of ``describe()``'s output."""
    b = info["backbone"]
    comps = info["components"]
    lines = [f"model: {info['model_class']}",
             f"language backbone: {b['owner_class']} at '{b['owner_path'] or '(root)'}' "
             f"({b['model_type']}, {'decoder' if b['is_decoder'] else 'encoder'}), "
             f"{b['num_blocks']} x {b['block_class']} at '{b['blocks_path']}'",
             f"  hidden {b['hidden_size']}, vocabulary {b['vocab_size']}, embeddings '{b['embedding_path']}', "
             f"LM head '{b['lm_head_path']}'" + (" (tied)" if b["lm_head_tied"] else "")]
    prev = None
    for x in b["blocks"]:
        a, m = x["attention"], x["mlp"]
        desc = (f"heads {a['num_heads']}, kv heads {a['num_kv_heads']} (groups {a['kv_groups']}), head dim "
                f"{a['head_dim']}, {'fused qkv ' + a['qkv'] if a['qkv'] else 'q/k/v ' + a['q'] + ' ' + a['k'] + ' ' + a['v']}, "
                f"o {a['o']}; MLP {m['kind']} width {m['intermediate_size']} ({m['activation']})")
        if desc != prev:
            lines.append(f"  block {x['index']}{'+' if x['index'] + 1 < b['num_blocks'] else ''}: {desc}; {x['num_params']:,} params")
            prev = desc
    for kind in ("vision", "action"):
        for bl in info[kind]:
            lines.append(f"{kind} blocks: {bl['num_blocks']} at '{bl['path']}' (component '{bl['component']}'), "
                         f"{bl['params']:,} params")
    lines.append("parameters:")
    for name, c in comps.items():
        if name == "other":
            for p, n in c["modules"].items():
                lines.append(f"  other '{p}': {n:,}")
        else:
            lines.append(f"  {name}: {c['params']:,}" + (f" (blocks {c['blocks']:,})" if "blocks" in c else ""))
    return "\n".join(lines)


def inspect_model(model_path: str, out: str, blocks_path: str | None = None,
                  loaded: tuple[Any, str] | None = None) -> tuple[dict[str, Any], str]:
    """Open ``model_path``, locate its backbone and write ``inspect.json`` + ``summary.txt`` into ``out``.

    Args:
        model_path: vlatrim checkpoint dir, transformers model dir, or transformers config JSON.
        out: output directory (must not exist; written atomically).
        blocks_path: override for the backbone's block list (see ``locate_backbone``).
        loaded: (model, kind) when the caller already opened it (``vlatrim inspect`` opens checkpoints
            with weights through their policy family; kind is then the family's name).

    Returns:
        (the inspect.json content, the summary text).
    """
    from vlatrim.models.adapters.load import load_model
    from vlatrim.models.adapters.locate import locate_backbone
    from vlatrim.utils.io import atomic_dir, write_json_atomic

    model, kind = loaded if loaded is not None else load_model(model_path)
    info = {"source": {"path": str(model_path), "kind": kind}, **describe(locate_backbone(model, blocks_path))}
    text = summary_text(info)
    with atomic_dir(out) as tmp:
        write_json_atomic(tmp / "inspect.json", info)
        (tmp / "summary.txt").write_text(text + "\n")
    return info, text
