"""Parameter counting that treats shared (tied) tensors once: the one ``count_params`` of vlatrim.

It lives in ``models`` because every package downstream counts parameters (prune budgets, bench
reports, inspect): none of them has to import another for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn


def count_params(module: nn.Module | Iterable[nn.Module | None] | None,
                 exclude: Iterable[nn.Module | int | None] | None = None) -> int:
    """Number of distinct parameters in ``module``, minus any that belong to ``exclude``.

    A tensor shared by several modules (a tied embedding / LM head) counts once.

    Args:
        module: one module or several (``None`` entries are skipped).
        exclude: modules whose parameters are not counted (e.g. the blocks, when counting "the rest"),
            or ids of parameters (``id(p)``) not to count; ``None`` entries are skipped.
    Returns:
        The parameter count.
    """
    if module is None or isinstance(module, nn.Module):
        module = [module]
    skip: set[int] = set()
    for m in exclude or ():
        if isinstance(m, nn.Module):
            skip.update(id(p) for p in m.parameters())
        elif isinstance(m, int):
            skip.add(m)
    seen: set[int] = set()
    total = 0
    for m in module:
        if m is None:
            continue
        for p in m.parameters():
            if id(p) not in seen and id(p) not in skip:
                seen.add(id(p))
                total += p.numel()
    return total


def params_by_component(handle: Any) -> dict[str, int]:
    """Parameter counts of a located model by component.

    Args:
        handle: a ``BackboneHandle`` (``vlatrim.models.adapters.locate_backbone``).
    Returns:
        ``blocks`` (the backbone's blocks), ``embedding`` (token embedding), ``lm_head`` (0 when tied to the
        embedding, counted there), ``backbone_other`` (final norm and the like inside the backbone module),
        ``backbone`` (all of the above: what ``--ratio`` / ``--target-params`` budget), ``rest`` (vision
        tower, projector, action head, ...) and ``total``.
    """
    root = handle.root
    emb = root.get_submodule(handle.embedding_path) if handle.embedding_path else None
    head = root.get_submodule(handle.lm_head_path) if handle.lm_head_path else None
    blocks = count_params(handle.blocks)
    embedding = count_params(emb)
    lm_head = count_params(head, exclude=[emb])
    backbone_other = count_params(handle.owner, exclude=[handle.blocks, emb])
    backbone = blocks + embedding + lm_head + backbone_other
    total = count_params(root)
    return {"blocks": blocks, "embedding": embedding, "lm_head": lm_head, "backbone_other": backbone_other,
            "backbone": backbone, "rest": total - backbone, "total": total}
