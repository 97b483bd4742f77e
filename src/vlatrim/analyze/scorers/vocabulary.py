"""Vocabulary usage: which token ids the dataset's instructions (and any action tokens) use."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlatrim.analyze.base import SCORERS, Scorer, ScoreResult, ScoringContext
from vlatrim.errors import VlatrimError


@SCORERS.register("vocabulary")
@dataclass
class VocabularyUsage(Scorer):
    """Occurrences of every token id over the (distinct) instructions, special tokens included.

    Scores are keyed by the embedding path: one count per vocabulary row; a row with count 0 is never
    read on this dataset (a candidate for vocabulary trimming).
    """

    action_token_ids: tuple[int, ...] = ()
    """Token ids the model emits as actions (e.g. OpenVLA's last 256 ids); always counted as used."""

    name = "vocabulary"
    unit = "token"
    loss_units = False  # occurrence counts
    preference = 0

    def check(self, ctx: ScoringContext) -> None:
        h = ctx.handle
        if h.vocab_size is None or h.embedding_path is None:
            raise VlatrimError("vocabulary usage needs a backbone with a token embedding; this one has none")
        if ctx.tokenizer is None or not ctx.instructions:
            raise VlatrimError("vocabulary usage needs the dataset's instructions and the model's tokenizer, and this "
                               "model's family gives analysis no tokenizer; leave vocabulary out of --scorers")

    def score(self, ctx: ScoringContext) -> ScoreResult:
        self.check(ctx)
        h = ctx.handle
        texts = sorted(set(ctx.instructions))
        counts = torch.zeros(h.vocab_size, dtype=torch.float64)
        for ids in ctx.tokenizer(texts)["input_ids"]:
            ids_t = torch.as_tensor(ids, dtype=torch.long)
            if ids_t.numel() and int(ids_t.max()) >= h.vocab_size:
                raise VlatrimError(f"tokenizer produced id {int(ids_t.max())} >= vocabulary size {h.vocab_size}")
            counts.index_add_(0, ids_t, torch.ones(ids_t.numel(), dtype=torch.float64))
        used = counts > 0
        for t in self.action_token_ids:
            if not 0 <= t < h.vocab_size:
                raise VlatrimError(f"action token id {t} is outside the vocabulary (0..{h.vocab_size - 1})")
            used[t] = True
        top = torch.argsort(counts, descending=True)[:20].tolist()
        extras = {
            "instructions": len(texts),
            "used_ids": used.nonzero().flatten().tolist(),
            "num_used": int(used.sum()),
            "vocab_size": h.vocab_size,
            "fraction_used": float(used.sum()) / h.vocab_size,
            "embedding_params_used": int(used.sum()) * h.hidden_size,
            "embedding_params_total": h.vocab_size * h.hidden_size,
            "top_tokens": [[t, ctx.tokenizer.convert_ids_to_tokens(t), int(counts[t])] for t in top if counts[t] > 0],
        }
        return ScoreResult({h.embedding_path: counts}, extras)
