"""Depth cutter: remove whole blocks and keep every layer-indexed thing consistent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.prune.ops import remove_from_module_list, renumber_layer_idx


def check_drop(drop: Sequence[int], n_blocks: int, what: str = "blocks") -> list[int]:
    """Validate block indices to remove; returns them sorted. Refuses removing every block."""
    drop = sorted(set(int(i) for i in drop))
    bad = [i for i in drop if not 0 <= i < n_blocks]
    if bad:
        raise VlatrimError(f"{what}: index {bad[0]} out of range; valid: 0..{n_blocks - 1}")
    if len(drop) >= n_blocks:
        raise VlatrimError(f"{what}: removing all {n_blocks} blocks leaves no backbone; keep at least one")
    return drop


def fix_config_depth(config: Any, kept: Sequence[int], n_before: int, num_layers_field: str = "num_hidden_layers") -> None:
    """Make a (text) config describe only the kept blocks.

    - ``num_hidden_layers`` (or ``num_layers_field``) becomes ``len(kept)``;
    - every per-layer list (an attribute whose name contains ``layer`` and whose length is the old block
      count, e.g. Gemma2/3 and Qwen2/3 ``layer_types``) keeps the kept blocks' entries, so sliding vs full
      attention and the cache layout follow each block;
    - Qwen2/3 ``max_window_layers`` (blocks ``>= max_window_layers`` use the sliding window) becomes the
      number of kept blocks below it, which reproduces the same pattern over the kept blocks.
    """
    for name, value in list(vars(config).items()):
        if "layer" in name and isinstance(value, (list, tuple)) and len(value) == n_before and name != num_layers_field:
            setattr(config, name, type(value)(value[i] for i in kept))
    mwl = getattr(config, "max_window_layers", None)
    if isinstance(mwl, int):
        config.max_window_layers = sum(1 for i in kept if i < mwl)
    setattr(config, num_layers_field, len(kept))


def remove_blocks(blocks: nn.ModuleList, configs: Sequence[Any], drop: Sequence[int],
                  num_layers_field: str = "num_hidden_layers") -> list[int]:
    """Remove blocks ``drop`` from ``blocks`` and fix indices and configs, in place.

    Args:
        blocks: the backbone's block list.
        configs: every config object that describes this block list (the text config; for a VLM the
            nested ``text_config`` is usually the same object as the language model's config).
        drop: block indices to remove.
    Returns:
        Original indices of the blocks kept.
    """
    n = len(blocks)
    drop = check_drop(drop, n)
    kept = remove_from_module_list(blocks, drop)
    for new_idx, block in enumerate(blocks):
        renumber_layer_idx(block, new_idx)
    seen: set[int] = set()
    for cfg in configs:
        if id(cfg) not in seen:
            seen.add(id(cfg))
            fix_config_depth(cfg, kept, n, num_layers_field)
    return kept
