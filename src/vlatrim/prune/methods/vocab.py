"""Keep only the tokens a task uses, plus every special token."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlatrim.errors import VlatrimError
from vlatrim.prune.methods.base import PRUNE_METHODS, PlanContext, PruneMethod
from vlatrim.prune.plan import PrunePlan
from vlatrim.prune.vocab import token_id_fields

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest


def special_ids(configs: Iterable[Any], tokenizer: Any = None) -> set[int]:
    """Token ids that must survive: every config ``*_token_id`` / ``*_token_index`` and the tokenizer's
    special and added tokens."""
    ids: set[int] = set()
    for cfg in configs:
        if cfg is None:
            continue
        for v in token_id_fields(cfg).values():
            ids.update(v if isinstance(v, list) else [v])
    if tokenizer is not None:
        ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        ids.update(int(i) for i in (getattr(tokenizer, "added_tokens_decoder", None) or {}))
    return {i for i in ids if i >= 0}


def texts_from_data(path: str | Path) -> list[str]:
    """The task texts of a dataset: the instructions in a LeRobotDataset's ``meta/tasks.parquet``, or
    the lines of a text file."""
    path = Path(path)
    if (path / "meta" / "tasks.parquet").is_file():
        from vlatrim.data.lerobot import LeRobotDataset

        texts = [t for t in LeRobotDataset(path).tasks if t]  # the data package's reader: one text per task_index
        if not texts:
            raise VlatrimError(f"dataset {str(path)!r} holds no task texts")
        return texts
    if path.is_file():
        return [line for line in path.read_text().splitlines() if line.strip()]
    raise VlatrimError(f"--vocab-from {str(path)!r} is neither a LeRobot dataset (meta/tasks.parquet) nor a text file")


def token_ids_of(tokenizer: Any, texts: Iterable[str]) -> set[int]:
    """Every token id the tokenizer produces for ``texts`` (with its usual special tokens)."""
    ids: set[int] = set()
    for t in texts:
        ids.update(int(i) for i in tokenizer(t)["input_ids"])
    return ids


def vocab(handle: Any, used_ids: Iterable[int], tokenizer: Any = None, drop_lm_head: bool = False) -> PrunePlan:
    """Plan keeping the token ids ``used_ids`` plus every special token, in their original order.

    Args:
        handle: the located backbone.
        used_ids: ids the task's inputs contain.
        tokenizer: its special/added tokens are kept too.
        drop_lm_head: also remove the LM head (a VLA whose actions come from a regression head).
    """
    if handle.embedding_path is None:
        raise VlatrimError("--vocab-from: this model has no token embedding")
    keep = set(int(i) for i in used_ids)
    bad = sorted(i for i in keep if not 0 <= i < handle.vocab_size)
    if bad:
        raise VlatrimError(f"token ids {bad[:5]} are outside the model's vocabulary of {handle.vocab_size}")
    # Config defaults can name ids the embedding does not have (Idefics3's end_of_utterance_token_id on a
    # small vocabulary): those tokens cannot occur, so only existing ones are kept.
    specials = special_ids([handle.config, getattr(handle.root, "config", None)], tokenizer)
    keep |= {i for i in specials if i < handle.vocab_size}
    return PrunePlan(vocab=sorted(keep), drop_lm_head=drop_lm_head, methods=["vocab"],
                     notes={"vocab_before": handle.vocab_size, "vocab_after": len(keep)})


@PRUNE_METHODS.register("vocab")
class Vocabulary(PruneMethod):
    """``--vocab-from``: the tokens of the task's texts; with a parameter budget and an analysis that
    measured vocabulary usage (unless ``--no-budget-vocab``), the tokens it saw used; ``--drop-lm-head``
    alone removes the LM head only (recorded as ``drop-lm-head``)."""

    name = "vocab"
    stage = "vocabulary"

    def applies(self, request: PruneRequest) -> bool:
        return request.vocab_from is not None or request.drop_lm_head or self._budget(request)

    @staticmethod
    def _budget(request: PruneRequest) -> bool:
        return request.parameter_budget and request.budget_vocab and request.scores is not None

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        if request.vocab_from is not None:
            tok = context.tokenizer(required=True)
            if tok is None:
                raise VlatrimError("--vocab-from needs a model directory with a tokenizer")
            texts = texts_from_data(request.vocab_from)
            out = vocab(handle, token_ids_of(tok, texts), tok, drop_lm_head=request.drop_lm_head)
            out.notes["vocab_texts"] = texts
            return out
        used = scores.used_token_ids() if self._budget(request) and scores is not None else None
        if used is not None:
            # Tokens the task never uses are the cheapest parameters to remove: the budget takes them first.
            return vocab(handle, used, context.tokenizer(required=False), drop_lm_head=request.drop_lm_head)
        if request.drop_lm_head:
            return PrunePlan(drop_lm_head=True, methods=["drop-lm-head"])
        return PrunePlan()
