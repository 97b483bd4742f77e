"""A pruning plan: exactly which blocks, heads, channels and tokens go. Plans are made by the
selectors in ``vlatrim.prune.methods`` and carried out by ``vlatrim.prune.surgery.apply_plan``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Coupling:
    """A cut of one block list that forces a cut of another (declared by a policy family).

    Removing block ``i`` of ``source`` removes block ``j`` of ``target`` for every pair ``(i, j)`` in
    ``pairs``; with ``symmetric`` the rule also runs the other way. SmolVLA's action expert, whose layer
    i reads VLM layer i's keys and values, is ``Coupling(vlm_layers, expert_layers, ((i, i), ...))``.
    """

    source: str  # dotted path of the block list whose cut forces the other
    target: str  # dotted path of the block list that follows
    pairs: tuple[tuple[int, int], ...]  # (source index, target index) that go together
    symmetric: bool = True  # a cut of the target block removes its source partner too
    reason: str = ""  # why, for prune.json and error messages

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "pairs": [list(p) for p in self.pairs],
                "symmetric": self.symmetric, "reason": self.reason}


def close_over_couplings(drops: dict[str, list[int]], couplings: list[Coupling]) -> dict[str, list[int]]:
    """Every block removal that ``drops`` (block-list path -> indices) forces through ``couplings``,
    applied until nothing changes. Returns a new mapping with sorted indices (empty lists left out)."""
    out = {k: set(v) for k, v in drops.items() if v}
    changed = True
    while changed:
        changed = False
        for c in couplings:
            rules = [(c.source, c.target, c.pairs)]
            if c.symmetric:
                rules.append((c.target, c.source, tuple((j, i) for i, j in c.pairs)))
            for src, tgt, pairs in rules:
                have = out.get(src, set())
                forced = {j for i, j in pairs if i in have} - out.get(tgt, set())
                if forced:
                    out.setdefault(tgt, set()).update(forced)
                    changed = True
    return {k: sorted(v) for k, v in out.items() if v}


@dataclass
class PrunePlan:
    """What to remove. All block indices refer to the model as it was before any cut.

    An empty plan (the default) removes nothing and is an exact identity.
    """

    drop_blocks: list[int] = field(default_factory=list)  # backbone blocks removed, original indices
    heads: dict[int, list[int]] = field(default_factory=dict)  # block -> query heads KEPT (GQA-consistent)
    mlp: dict[int, list[int]] = field(default_factory=dict)  # block -> MLP channels KEPT
    vocab: list[int] | None = None  # token ids KEPT, in the order of their new ids (None: vocabulary untouched)
    drop_lm_head: bool = False  # remove the LM head (actions come from a regression head)
    pathway_drops: dict[str, list[int]] = field(default_factory=dict)  # other block lists (vision encoder,
    # action expert): dotted block-list path -> blocks removed, original indices
    methods: list[str] = field(default_factory=list)  # which selectors made this plan, for the record
    notes: dict[str, Any] = field(default_factory=dict)  # selector inputs worth recording (ratio, budget, spans)

    def __post_init__(self) -> None:
        self.drop_blocks = sorted(set(int(i) for i in self.drop_blocks))
        self.heads = {int(b): sorted(int(h) for h in hs) for b, hs in self.heads.items()}
        self.mlp = {int(b): sorted(int(c) for c in cs) for b, cs in self.mlp.items()}
        self.pathway_drops = {str(p): sorted(set(int(i) for i in idx)) for p, idx in self.pathway_drops.items() if idx}

    def merge(self, other: PrunePlan) -> PrunePlan:
        """The union of two plans (e.g. depth from one selector, width from another)."""
        return PrunePlan(
            drop_blocks=sorted(set(self.drop_blocks) | set(other.drop_blocks)),
            heads={**self.heads, **other.heads},
            mlp={**self.mlp, **other.mlp},
            vocab=other.vocab if other.vocab is not None else self.vocab,
            drop_lm_head=self.drop_lm_head or other.drop_lm_head,
            pathway_drops={p: sorted(set(self.pathway_drops.get(p, [])) | set(other.pathway_drops.get(p, [])))
                           for p in set(self.pathway_drops) | set(other.pathway_drops)},
            methods=self.methods + other.methods,
            notes={**self.notes, **other.notes},
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.pathway_drops:
            d.pop("pathway_drops")  # plans of the language backbone alone read as before
        d["heads"] = {str(k): v for k, v in self.heads.items()}
        d["mlp"] = {str(k): v for k, v in self.mlp.items()}
        if self.vocab is not None:
            d["vocab_size_kept"] = len(self.vocab)
        return d

    def describe(self, num_blocks: int) -> list[str]:
        """Human-readable lines, printed before cutting."""
        lines = []
        if self.drop_blocks:
            kept = [i for i in range(num_blocks) if i not in set(self.drop_blocks)]
            lines.append(f"blocks: remove {self.drop_blocks} of {num_blocks}; keep {kept}")
        for b, hs in sorted(self.heads.items()):
            if b not in self.drop_blocks:
                lines.append(f"block {b}: keep {len(hs)} query heads {hs}")
        for b, cs in sorted(self.mlp.items()):
            if b not in self.drop_blocks:
                lines.append(f"block {b}: keep {len(cs)} MLP channels")
        for p, idx in sorted(self.pathway_drops.items()):
            lines.append(f"{p}: remove blocks {idx}")
        if self.vocab is not None:
            lines.append(f"vocabulary: keep {len(self.vocab)} tokens")
        if self.drop_lm_head:
            lines.append("LM head: remove")
        if "budget_params_removed" in self.notes:
            by = ", ".join(f"{k} {v:,}" for k, v in self.notes["budget_params_removed"].items())
            lines.append(f"budget (loss per parameter, {self.notes.get('block_scorer', '?')} + taylor): params removed by kind: {by}")
        return lines or ["nothing to remove (identity)"]
