"""Grouped-query attention rules: which sets of query heads can be kept.

With ``H`` query heads sharing ``K`` key/value heads, query head ``h`` reads KV head ``h // (H // K)``.
A cut is consistent when every KV head that survives keeps the same number of query heads (so the
model's single ``num_key_value_groups`` still describes it) and a KV head with no query head left is
removed with them. Two ways of cutting satisfy that: remove whole groups (a KV head with all its
query heads), or remove the same number of query heads from every group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from vlatrim.errors import VlatrimError

HeadMode = Literal["auto", "kv", "query"]


def group_size(num_heads: int, num_kv_heads: int) -> int:
    return num_heads // num_kv_heads


def valid_head_counts(num_heads: int, num_kv_heads: int) -> list[int]:
    """Every total of query heads a consistent cut can keep: ``groups_kept * heads_per_group``."""
    g = group_size(num_heads, num_kv_heads)
    return sorted({k * q for k in range(1, num_kv_heads + 1) for q in range(1, g + 1)})


def nearest_valid(n: int, num_heads: int, num_kv_heads: int) -> str:
    valid = valid_head_counts(num_heads, num_kv_heads)
    below = [v for v in valid if v < n]
    above = [v for v in valid if v > n]
    near = ([below[-1]] if below else []) + ([above[0]] if above else [])
    return " or ".join(str(v) for v in near)


def kv_heads_for(keep_q: torch.Tensor, num_heads: int, num_kv_heads: int, what: str) -> torch.Tensor:
    """The KV heads that a set of kept query heads needs; refuses a GQA-inconsistent set.

    Args:
        keep_q: sorted LongTensor of query heads to keep.
        num_heads / num_kv_heads: the block's current head counts.
        what: name used in error messages.
    Returns:
        Sorted LongTensor of KV heads to keep.
    """
    g = group_size(num_heads, num_kv_heads)
    groups = keep_q // g
    kv, counts = groups.unique(return_counts=True)
    if counts.unique().numel() != 1:
        per = {int(k): int(c) for k, c in zip(kv, counts)}
        raise VlatrimError(
            f"{what}: query heads {keep_q.tolist()} keep unequal numbers per KV group {per} "
            f"(groups of {g}); keep whole groups or the same number in every group, e.g. "
            f"{nearest_valid(int(keep_q.numel()), num_heads, num_kv_heads) or 'a count in ' + str(valid_head_counts(num_heads, num_kv_heads))} heads"
        )
    return kv


def select_heads(
    scores: Sequence[float] | torch.Tensor, n_keep: int, num_heads: int, num_kv_heads: int,
    mode: HeadMode = "auto", what: str = "heads",
) -> torch.Tensor:
    """Choose which query heads to keep from per-head scores (higher = more important), GQA-consistently.

    ``mode="kv"`` keeps whole groups (ranked by the sum of their heads' scores); ``mode="query"`` keeps the
    same number of best heads inside every group; ``"auto"`` uses whole groups when ``n_keep`` is a
    multiple of the group size, else even removal within groups.

    Returns:
        Sorted LongTensor of kept query-head indices.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if s.numel() != num_heads:
        raise VlatrimError(f"{what}: {s.numel()} head scores given for {num_heads} heads")
    g = group_size(num_heads, num_kv_heads)
    if not 1 <= n_keep <= num_heads:
        raise VlatrimError(f"{what}: cannot keep {n_keep} of {num_heads} heads; valid: 1..{num_heads}")
    if mode == "auto":
        mode = "kv" if n_keep % g == 0 else "query"
    if mode == "kv":
        if n_keep % g:
            raise VlatrimError(
                f"{what}: keeping {n_keep} heads by whole KV groups needs a multiple of {g}; "
                f"nearest valid: {nearest_valid(n_keep, num_heads, num_kv_heads)}")
        group_scores = s.view(num_kv_heads, g).sum(1)
        # stable sort so ties keep the earlier group (deterministic plans)
        kept_groups = torch.sort(torch.argsort(-group_scores, stable=True)[: n_keep // g]).values
        return head_index_of_groups(kept_groups, g)
    if mode == "query":
        if n_keep % num_kv_heads:
            raise VlatrimError(
                f"{what}: keeping {n_keep} heads evenly in {num_kv_heads} KV groups needs a multiple of "
                f"{num_kv_heads}; nearest valid: {nearest_valid(n_keep, num_heads, num_kv_heads)}")
        per = n_keep // num_kv_heads
        within = torch.argsort(-s.view(num_kv_heads, g), dim=1, stable=True)[:, :per]  # (K, per)
        return torch.sort((within + torch.arange(num_kv_heads)[:, None] * g).reshape(-1)).values
    raise VlatrimError(f"{what}: unknown head mode {mode!r}; valid: auto, kv, query")


def head_index_of_groups(groups: torch.Tensor, g: int) -> torch.Tensor:
    """All query heads of the given KV groups."""
    return (groups[:, None] * g + torch.arange(g)[None, :]).reshape(-1)
