"""Vocabulary cutter: keep some token ids, renumber them 0..n-1, and remap everything that holds ids.

The model keeps exactly the embedding rows (and LM-head rows) of the kept tokens, so a sequence mapped
through :class:`TokenRemap` produces the same hidden states and the same logits over the kept tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.prune.ops import as_index, slice_embedding, slice_linear


def token_id_fields(config: Any) -> dict[str, int | list[int]]:
    """The config fields that hold token ids (``pad_token_id``, ``eos_token_id``, ``image_token_id``,
    ``image_token_index``, ...), by the naming rule ``*_token_id`` / ``*_token_index``."""
    out = {}
    for name, value in vars(config).items():
        if name.endswith(("_token_id", "_token_index")) and value is not None:
            if isinstance(value, int) and not isinstance(value, bool):
                out[name] = value
            elif isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
                out[name] = list(value)
    return out


class TokenRemap:
    """old token id <-> new token id after a vocabulary cut.

    Args:
        kept: old ids kept, in the order of their new ids (new id ``i`` is old id ``kept[i]``).
        old_size: the vocabulary size before the cut.
    """

    def __init__(self, kept: Sequence[int], old_size: int) -> None:
        self.kept = torch.as_tensor(list(kept), dtype=torch.long)
        self.old_size = int(old_size)
        self._old_to_new = torch.full((self.old_size,), -1, dtype=torch.long)
        self._old_to_new[self.kept] = torch.arange(len(self.kept))

    def __len__(self) -> int:
        return len(self.kept)

    def to_new(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Map old ids to new ids; an id that was cut raises a VlatrimError naming it."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.old_size):
            raise VlatrimError(f"token id out of range for the original vocabulary of {self.old_size}")
        new = self._old_to_new[ids]
        if (new < 0).any():
            missing = sorted(set(ids[new < 0].tolist()))[:10]
            raise VlatrimError(f"token ids {missing} were removed from the vocabulary; the input uses tokens outside the kept set")
        return new

    def to_old(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        return self.kept[torch.as_tensor(ids, dtype=torch.long)]

    def to_json(self) -> dict[str, Any]:
        return {"old_vocab_size": self.old_size, "kept_old_ids": self.kept.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TokenRemap:
        return cls(d["kept_old_ids"], d["old_vocab_size"])


class RemappedTokenizer:
    """A tokenizer whose ids are the pruned model's: it runs the original tokenizer and maps the ids.

    ``tokenizer(...)`` returns what the original returns with ``input_ids`` remapped (lists or tensors);
    ``decode`` maps back first. Text that needs a removed token raises a VlatrimError.
    """

    def __init__(self, tokenizer: Any, remap: TokenRemap) -> None:
        self.tokenizer = tokenizer
        self.remap = remap

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        enc = self.tokenizer(*args, **kwargs)
        ids = enc["input_ids"]
        if isinstance(ids, torch.Tensor):
            enc["input_ids"] = self.remap.to_new(ids)
        elif ids and isinstance(ids[0], list):
            enc["input_ids"] = [self.remap.to_new(x).tolist() for x in ids]
        else:
            enc["input_ids"] = self.remap.to_new(ids).tolist()
        return enc

    def decode(self, ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(self.remap.to_old(ids).tolist(), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def cut_vocab(embedding: nn.Embedding, keep: Sequence[int], configs: Iterable[Any],
              lm_head: nn.Linear | None = None, tied: bool = False) -> TokenRemap:
    """Keep only the tokens ``keep`` (old ids; new id i = keep[i] after sorting), in place.

    Args:
        embedding: the token embedding (rows = vocabulary).
        keep: old token ids to keep. Every id named by a config ``*_token_id`` field must be among them.
        configs: configs whose ``vocab_size`` and token-id fields must follow (text config, VLM config).
        lm_head: output projection to the vocabulary (rows = vocabulary), if any.
        tied: ``lm_head`` shares the embedding's weight; it is re-tied to the cut embedding.
    Returns:
        The TokenRemap between old and new ids.
    """
    old = embedding.num_embeddings
    idx = as_index(keep, old, "vocabulary")
    configs = list({id(c): c for c in configs}.values())
    for cfg in configs:
        for name, value in token_id_fields(cfg).items():
            vals = value if isinstance(value, list) else [value]
            lost = [v for v in vals if 0 <= v < old and not bool((idx == v).any())]
            if lost:
                raise VlatrimError(f"vocabulary: config {name}={value} is not among the kept tokens; keep the special tokens")
    remap = TokenRemap(idx.tolist(), old)
    slice_embedding(embedding, idx)
    if lm_head is not None:
        if tied:
            lm_head.weight = embedding.weight  # same Parameter: stays tied, and saves as tied
            lm_head.out_features = embedding.num_embeddings
            if lm_head.bias is not None:
                lm_head.bias = nn.Parameter(lm_head.bias.data[idx].clone(), requires_grad=lm_head.bias.requires_grad)
        else:
            slice_linear(lm_head, idx, "out")
    for cfg in configs:
        if getattr(cfg, "vocab_size", None) == old:
            cfg.vocab_size = len(idx)
        for name, value in token_id_fields(cfg).items():
            if isinstance(value, list):
                setattr(cfg, name, [int(remap.to_new([v])[0]) if 0 <= v < old else v for v in value])
            elif 0 <= value < old:
                setattr(cfg, name, int(remap.to_new([value])[0]))
    return remap
