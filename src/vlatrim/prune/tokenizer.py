"""A real tokenizer for a shrunken vocabulary, where the tokenizer's algorithm allows one.

WordPiece (BERT, MiniLM: the reference VLA's tokenizer) picks, for each word, the longest prefix that is
in the vocabulary. Every piece the task's texts produce is kept, and a longer piece that was never
chosen cannot start being chosen when others are removed, so on the task's texts the shrunken
tokenizer produces exactly the same pieces, under their new ids. Text with removed pieces becomes
``[UNK]``. BPE / Unigram tokenizers (Llama, Gemma, Qwen) are not rewritten: their merges would break;
those get ``vocab_map.json`` and :class:`vlatrim.prune.vocab.RemappedTokenizer` instead.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlatrim.prune.vocab import TokenRemap


def _new_id(remap: TokenRemap, old: int) -> int | None:
    return int(remap._old_to_new[old]) if 0 <= old < remap.old_size and int(remap._old_to_new[old]) >= 0 else None


def can_rewrite(tokenizer: Any) -> bool:
    """Whether :func:`rewrite_wordpiece` applies (a fast WordPiece tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and json.loads(backend.to_str()).get("model", {}).get("type") == "WordPiece"


def rewrite_wordpiece(tokenizer: Any, remap: TokenRemap) -> Any | None:
    """A tokenizer of the same class whose vocabulary is the kept tokens under their new ids.

    Args:
        tokenizer: a transformers tokenizer with a fast (``tokenizers``) backend.
        remap: the vocabulary cut.
    Returns:
        The new tokenizer, or None when the tokenizer is not WordPiece (or not fast).
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    if (spec.get("model") or {}).get("type") != "WordPiece":
        return None
    vocab = spec["model"]["vocab"]
    kept_tokens = {tok: _new_id(remap, i) for tok, i in vocab.items()}
    spec["model"]["vocab"] = {t: i for t, i in sorted(kept_tokens.items(), key=lambda kv: kv[1] if kv[1] is not None else -1)
                              if i is not None}
    if spec["model"].get("unk_token") not in spec["model"]["vocab"]:
        return None  # nothing to fall back on for unseen words
    spec["added_tokens"] = [dict(t, id=_new_id(remap, t["id"])) for t in spec.get("added_tokens") or []
                            if _new_id(remap, t["id"]) is not None]
    post = spec.get("post_processor") or {}
    for entry in (post.get("special_tokens") or {}).values():  # TemplateProcessing: [CLS], [SEP] ids
        ids = [_new_id(remap, i) for i in entry.get("ids", [])]
        if any(i is None for i in ids):
            return None
        entry["ids"] = ids
    if spec.get("padding") and spec["padding"].get("pad_id") is not None:
        pid = _new_id(remap, spec["padding"]["pad_id"])
        if pid is None:
            return None
        spec["padding"]["pad_id"] = pid
    new_backend = Tokenizer.from_str(json.dumps(spec))
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        Path(d, "tokenizer.json").write_text(new_backend.to_str())
        inv = {i: t for t, i in spec["model"]["vocab"].items()}
        if Path(d, "vocab.txt").is_file():  # slow-format vocabulary: line i is the token of id i
            Path(d, "vocab.txt").write_text("".join(inv[i] + "\n" for i in range(len(inv))))
        return AutoTokenizer.from_pretrained(d)


def agrees(old: Any, new: Any, remap: TokenRemap, texts: Iterable[str]) -> bool:
    """The new tokenizer gives exactly the remapped ids of the old one on ``texts``."""
    for t in texts:
        a, b = old(t)["input_ids"], new(t)["input_ids"]
        if remap.to_new(a).tolist() != list(b):
            return False
    return True
