"""A pruning plan: exactly which blocks, heads, channels and tokens go. Plans are made by the
selectors in ``vlatrim.prune.methods`` and carried out by ``vlatrim.prune.surgery.apply_plan``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    methods: list[str] = field(default_factory=list)  # which selectors made this plan, for the record
    notes: dict[str, Any] = field(default_factory=dict)  # selector inputs worth recording (ratio, budget, spans)

    def __post_init__(self) -> None:
        self.drop_blocks = sorted(set(int(i) for i in self.drop_blocks))
        self.heads = {int(b): sorted(int(h) for h in hs) for b, hs in self.heads.items()}
        self.mlp = {int(b): sorted(int(c) for c in cs) for b, cs in self.mlp.items()}

    def merge(self, other: PrunePlan) -> PrunePlan:
        """The union of two plans (e.g. depth from one selector, width from another)."""
        return PrunePlan(
            drop_blocks=sorted(set(self.drop_blocks) | set(other.drop_blocks)),
            heads={**self.heads, **other.heads},
            mlp={**self.mlp, **other.mlp},
            vocab=other.vocab if other.vocab is not None else self.vocab,
            drop_lm_head=self.drop_lm_head or other.drop_lm_head,
            methods=self.methods + other.methods,
            notes={**self.notes, **other.notes},
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
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
        if self.vocab is not None:
            lines.append(f"vocabulary: keep {len(self.vocab)} tokens")
        if self.drop_lm_head:
            lines.append("LM head: remove")
        if "budget_params_removed" in self.notes:
            by = ", ".join(f"{k} {v:,}" for k, v in self.notes["budget_params_removed"].items())
            lines.append(f"budget (loss per parameter, {self.notes.get('block_scorer', '?')} + taylor): params removed by kind: {by}")
        return lines or ["nothing to remove (identity)"]
