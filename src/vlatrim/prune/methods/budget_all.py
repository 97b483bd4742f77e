"""One parameter budget solved across depth and width: whole blocks, attention heads and MLP channels
compete on one scale, the estimated loss increase per parameter removed.

Every score must be in loss units (scorers that declare ``loss_units``, recorded in analysis.json: block
scores from ``drop_one`` / ``gateprobe``, head and channel scores from ``head_taylor`` /
``channel_taylor``), so a block's score and a head group's summed score are comparable. The selector only chooses indices; cutting stays with ``vlatrim.prune.surgery``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vlatrim.errors import VlatrimError
from vlatrim.prune.gqa import HeadMode
from vlatrim.prune.methods.base import PRUNE_METHODS, PlanContext, PruneMethod, budget_to_remove, vocab_params_removed
from vlatrim.prune.plan import PrunePlan
from vlatrim.prune.surgery import width_savings

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest

KIND_ORDER = {"block": 0, "kv_group": 1, "query_heads": 2, "channel": 3}  # tie-break between kinds


@dataclass(frozen=True)
class Unit:
    """One removable piece: a block, a KV group (with its query heads), one query head from every KV group
    of a block (the ``index``-th least important in each), or one MLP channel."""

    kind: str  # "block" | "kv_group" | "query_heads" | "channel"
    block: int  # block index in the model before any cut
    index: int  # group / rank / channel index inside the block (0 for a block)
    score: float  # estimated loss increase of removing it
    params: int  # parameters it holds (for a block: before any width cut)
    heads: tuple[int, ...] = ()  # query heads it removes (head kinds only)

    @property
    def cost(self) -> float:
        """Estimated loss increase per parameter: the greedy order."""
        return self.score / self.params


def _params_removed_by(handle: Any, b: int, heads: list[int] | None = None, mlp: list[int] | None = None) -> int:
    """Parameters a width cut of block ``b`` saves, from the same arithmetic the surgery's budget uses."""
    plan = PrunePlan(heads={b: heads} if heads is not None else {}, mlp={b: mlp} if mlp is not None else {})
    return width_savings(handle, plan)[b]


def units_of(handle: Any, block_scores: Sequence[float], head_scores: Mapping[int, Sequence[float]],
             channel_scores: Mapping[int, Sequence[float]], head_mode: HeadMode = "auto") -> list[Unit]:
    """Every removable unit of the backbone with its score and parameter count.

    Heads follow the GQA rules of ``vlatrim.prune.gqa``: ``head_mode`` ``"kv"`` / ``"auto"`` offers whole
    KV groups (score: the sum of the group's heads); ``"query"`` offers "one more query head from every
    group", the r-th unit of a block removing the r-th least important head of each group (score: their
    sum), so ranks of one block are taken in order (their scores only grow).
    """
    if head_mode not in ("auto", "kv", "query"):
        raise VlatrimError(f"head mode {head_mode!r} is not one of auto, kv, query")
    units: list[Unit] = []
    for b, lay in enumerate(handle.layouts):
        units.append(Unit("block", b, 0, float(block_scores[b]), int(lay.num_params)))
        att = lay.attention
        if att is not None:
            s = torch.as_tensor(list(head_scores[b]), dtype=torch.float64)
            if s.numel() != att.num_heads:
                raise VlatrimError(f"head scores for block {b}: {s.numel()} values for {att.num_heads} heads")
            H, K = att.num_heads, att.num_kv_heads
            g = H // K
            if head_mode == "query" and g > 1:
                order = torch.argsort(s.view(K, g), dim=1, stable=True)  # (K, g) least important first
                for r in range(g):
                    hs = tuple(sorted(int(k * g + order[k, r]) for k in range(K)))
                    units.append(Unit("query_heads", b, r, float(s[list(hs)].sum()),
                                      _params_removed_by(handle, b, heads=[h for h in range(H) if h not in hs]), hs))
            else:
                for k in range(K):
                    hs = tuple(range(k * g, (k + 1) * g))
                    units.append(Unit("kv_group", b, k, float(s[list(hs)].sum()),
                                      _params_removed_by(handle, b, heads=[h for h in range(H) if h not in hs]), hs))
        if lay.mlp is not None:
            c = torch.as_tensor(list(channel_scores[b]), dtype=torch.float64)
            I = lay.mlp.intermediate_size
            if c.numel() != I:
                raise VlatrimError(f"channel scores for block {b}: {c.numel()} values for {I} channels")
            per = _params_removed_by(handle, b, mlp=list(range(1, I))) if I > 1 else 0
            units.extend(Unit("channel", b, i, float(c[i]), per) for i in range(I))
    return [u for u in units if u.params > 0]


def solve(units: Sequence[Unit], to_remove: int, layouts: Sequence[Any]) -> tuple[list[Unit], dict[str, int]]:
    """Greedily remove the units with the lowest loss per parameter until ``to_remove`` parameters are gone.

    A unit that would empty its block of heads or channels is skipped (the block itself competes as a
    unit), the last block is never removed, a block removed after some of its width was already cut saves
    only what remains, and width units of a removed block are skipped. The loop stops at the first unit
    that meets the budget, so it overshoots by less than that unit's parameters.

    Returns:
        (the units removed in the order chosen, parameters removed by kind).
    """
    order = sorted(units, key=lambda u: (u.cost, KIND_ORDER[u.kind], u.block, u.index))
    n_blocks = len(layouts)
    dropped: set[int] = set()
    heads_left = {b: set(range(l.attention.num_heads)) for b, l in enumerate(layouts) if l.attention is not None}
    ch_left = {b: l.mlp.intermediate_size for b, l in enumerate(layouts) if l.mlp is not None}
    width_cut = [0] * n_blocks
    chosen: list[Unit] = []
    by_kind = {"blocks": 0, "heads": 0, "channels": 0}
    removed = 0
    for u in order:
        if removed >= to_remove:
            break
        b = u.block
        if b in dropped:
            continue
        if u.kind == "block":
            if len(dropped) + 1 >= n_blocks:
                continue  # the backbone keeps at least one block
            saved = u.params - width_cut[b]
            dropped.add(b)
            by_kind["blocks"] += saved
        elif u.kind == "channel":
            if ch_left[b] <= 1:
                continue  # never empty a block's MLP: the block competes as a whole instead
            ch_left[b] -= 1
            saved = u.params
            by_kind["channels"] += saved
        else:
            if len(heads_left[b] - set(u.heads)) == 0:
                continue  # never empty a block's attention
            heads_left[b] -= set(u.heads)
            saved = u.params
            by_kind["heads"] += saved
        if u.kind != "block":
            width_cut[b] += saved
        removed += saved
        chosen.append(u)
    if removed < to_remove:
        raise VlatrimError(f"the budget needs {to_remove} parameters removed but blocks, heads and channels that can go "
                           f"hold only {removed}; ask for less")
    return chosen, by_kind


def budget_all(handle: Any, to_remove: int, block_scores: Sequence[float], head_scores: Mapping[int, Sequence[float]],
               channel_scores: Mapping[int, Sequence[float]], head_mode: HeadMode = "auto") -> PrunePlan:
    """Plan removing at least ``to_remove`` backbone parameters from blocks, heads and channels together.

    Args:
        handle: the located backbone.
        to_remove: parameters still to remove (after the vocabulary, if the budget spent some there).
        block_scores: one estimated loss increase per block (``drop_one`` / ``gateprobe``).
        head_scores / channel_scores: per block, one first-order loss-change estimate per query head /
            MLP channel (``head_taylor`` / ``channel_taylor``).
        head_mode: GQA rule for head units (``"kv"`` / ``"auto"``: whole KV groups; ``"query"``: evenly).
    Returns:
        A plan with ``drop_blocks``, ``heads`` and ``mlp`` (kept indices) and, in ``notes``, the units removed
        and the parameters removed by kind.
    """
    if len(block_scores) != handle.num_blocks:
        raise VlatrimError(f"block scores: {len(block_scores)} scores for {handle.num_blocks} blocks")
    units = units_of(handle, block_scores, head_scores, channel_scores, head_mode)
    chosen, by_kind = solve(units, max(0, int(to_remove)), handle.layouts)
    drop = sorted(u.block for u in chosen if u.kind == "block")
    gone_heads: dict[int, set[int]] = {}
    gone_ch: dict[int, set[int]] = {}
    for u in chosen:
        if u.block in drop:
            continue  # the whole block goes: its width cuts are moot
        if u.kind == "channel":
            gone_ch.setdefault(u.block, set()).add(u.index)
        elif u.kind != "block":
            gone_heads.setdefault(u.block, set()).update(u.heads)
    heads = {b: [h for h in range(handle.layouts[b].attention.num_heads) if h not in hs] for b, hs in gone_heads.items()}
    mlp = {b: [c for c in range(handle.layouts[b].mlp.intermediate_size) if c not in cs] for b, cs in gone_ch.items()}
    notes = {
        "budget_units": "all",
        "head_mode": head_mode,
        "params_to_remove_after_vocab": int(to_remove),
        "budget_params_removed": by_kind,
        "units_removed": {
            "blocks": drop,
            "heads": {str(b): sorted(hs) for b, hs in sorted(gone_heads.items())},
            "channels": {str(b): len(cs) for b, cs in sorted(gone_ch.items())},
        },
        "units_chosen": len(chosen),
    }
    return PrunePlan(drop_blocks=drop, heads=heads, mlp=mlp, methods=["budget-all"], notes=notes)


@PRUNE_METHODS.register("budget-all")
class BudgetAll(PruneMethod):
    """``--scores A`` with ``--ratio`` / ``--target-params`` and ``--budget-units all``: the rest of the budget,
    after the vocabulary, spent on blocks, heads and channels together by loss per parameter, from the
    analysis's scorers in loss units."""

    name = "budget-all"
    stage = "depth"

    def applies(self, request: PruneRequest) -> bool:
        return request.parameter_budget and request.budget_units == "all"

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        found = scores.loss_unit_scores(handle, request.scorer)
        to_remove = budget_to_remove(request, context.params_before["backbone"])
        vocab_saving = vocab_params_removed(handle, context.plan, context.params_before)
        out = budget_all(handle, to_remove - vocab_saving, found["block"], found["head"], found["channel"],
                         request.head_mode)
        out.notes.update({"block_scorer": found["block_scorer"], "params_to_remove": to_remove,
                          "vocab_params_removed": vocab_saving})
        out.notes["budget_params_removed"] = {"vocab": vocab_saving, **out.notes["budget_params_removed"]}
        return out
