"""Plain transformers text models and VLMs (Llama, Qwen2/3, Gemma, BERT, LLaVA, PaliGemma, ...) as a family.

Their loss is next-token cross-entropy on a dataset's instruction texts: enough to score and cut a
language backbone before it goes into a VLA. They predict no actions, so they are not policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vlatrim.errors import VlatrimError
from vlatrim.families.base import LossInfo, PolicyFamily, SampleSet, Split, register_family

MAX_TOKENS = 32  # instruction tokens per calibration sample


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM on ``input_ids`` (padding masked by ``attention_mask``),
    averaged per sequence and then over the batch, so it is a mean of per-sample losses."""
    import torch.nn.functional as F

    ids = batch["input_ids"]  # (B, L)
    mask = batch.get("attention_mask", torch.ones_like(ids))
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, L-1, V)
    tgt, m = ids[:, 1:], mask[:, 1:].to(logits.dtype)
    ce = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none").view_as(m)
    per_seq = (ce * m).sum(1) / m.sum(1).clamp_min(1)
    return per_seq.mean()


class TextSamples(Dataset):
    """Tokenized texts, padded to a fixed length: ``__getitems__`` -> {input_ids, attention_mask} (B, L)."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.input_ids, self.attention_mask = input_ids, attention_mask

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(indices, dtype=torch.long)
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}


@register_family
class TransformersFamily(PolicyFamily):
    """Any local transformers model directory (config.json + safetensors) whose classes this install has, or
    whose own code (``auto_map``) the caller trusts (``trust_remote_code``)."""

    name = "transformers"
    description = "a transformers text model or VLM (next-token loss on instruction texts)"
    trains_policies = False

    def recognizes(self, path: Path, config: dict[str, Any]) -> bool:
        from transformers import CONFIG_MAPPING

        # A model that ships its own code (auto_map) is answered here too, so that loading it names
        # --trust-remote-code instead of "no family recognises it".
        return isinstance(config.get("model_type"), str) and (
            config["model_type"] in CONFIG_MAPPING or isinstance(config.get("auto_map"), dict))

    def owns(self, model: nn.Module) -> bool:
        from transformers import PreTrainedModel

        return isinstance(model, PreTrainedModel)

    def load(self, path: Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> nn.Module:
        from vlatrim.families.base import read_config
        from vlatrim.models.adapters.load import remote_model_class
        from vlatrim.prune import load_pruned

        # The directory's own model class when it ships code and the caller trusts it (refused otherwise).
        cls = remote_model_class(path, read_config(path), trust_remote_code)
        return load_pruned(path, model_cls=cls).to(device).eval()

    def save(self, model: nn.Module, out: Path, destination: Path | None = None) -> None:
        from vlatrim.prune.surgery import WIDTHS_KEY

        cfg = model.config
        recorded = hasattr(cfg, WIDTHS_KEY) or hasattr(getattr(cfg, "text_config", None), WIDTHS_KEY)
        # A checkpoint with per-block widths needs vlatrim's loader, which reads tensors under the model's
        # own parameter names (no legacy-key conversion) with safetensors directly.
        model.save_pretrained(out, save_original_format=not recorded)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        return {"loss": lm_loss(model, batch)}

    def loss_info(self, model: nn.Module) -> LossInfo:
        return LossInfo("nll", MAX_TOKENS - 1, "next-token cross-entropy")

    def tokenizer(self, model: nn.Module) -> Any:
        """The model directory's tokenizer; after a vocabulary cut that could not rewrite it, the original
        mapped to the pruned ids (``vlatrim.prune.load_tokenizer``)."""
        from vlatrim.prune import load_tokenizer

        src = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        try:
            tok = load_tokenizer(str(src))
        except (OSError, ValueError, TypeError):
            raise VlatrimError(f"model directory {src!r} has no tokenizer; text calibration needs one") from None
        inner = getattr(tok, "tokenizer", tok)  # a RemappedTokenizer pads with its original's pad token
        if inner.pad_token is None:
            inner.pad_token = inner.eos_token
        return tok

    def dataset(self, model: nn.Module, data: Path, split: Split = "train", val_fraction: float = 0.1) -> SampleSet:
        from vlatrim.data.lerobot import LeRobotDataset

        if not callable(getattr(model, "get_output_embeddings", None)) or model.get_output_embeddings() is None:
            raise VlatrimError(f"{type(model).__name__} has no LM head, so there is no loss to measure on text; "
                               f"analyze a VLA checkpoint that uses it as its backbone")
        tok = self.tokenizer(model)
        texts = sorted(set(t for t in LeRobotDataset(data).tasks if t))
        if not texts:
            raise VlatrimError(f"dataset {str(data)!r} has no instructions in meta/tasks")
        enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        return SampleSet(TextSamples(enc["input_ids"], enc["attention_mask"]), texts,
                         {"dataset": str(data), "texts": len(texts)}, {"tokenizer": tok})
