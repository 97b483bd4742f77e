"""Calibration batches and the loss for a model and a dataset directory.

A reference VLA is measured against its own action loss on held-out episodes of a LeRobot dataset
(the last ``val_fraction`` of each task's episodes, as in training); a transformers causal LM against
next-token cross-entropy on the dataset's instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlatrim.analyze.base import LossSpec
from vlatrim.errors import VlatrimError


@dataclass
class Calibration:
    """What ``ScoringContext`` needs besides the model."""

    batches: list[Any]  # fixed calibration batches
    loss: LossSpec  # what importance is measured against
    instructions: list[str]  # the dataset's instruction texts
    tokenizer: Any  # the model's tokenizer
    description: dict[str, Any]  # where the batches came from (for analysis.json)


def _sample_rows(n: int, count: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:count]


def vla_calibration(model: nn.Module, data: str | Path, num_batches: int, batch_size: int, seed: int = 0,
                    val_fraction: float = 0.1) -> Calibration:
    """Batches of held-out samples from a LeRobot dataset for a reference VLA.

    Raises:
        VlatrimError: the dataset lacks what the model needs (image size, state or action width).
    """
    from vlatrim.analyze.losses import vla_loss_spec
    from vlatrim.train.data import ChunkDataset, read_demo_frames, split_episodes

    cfg = model.config
    frames = read_demo_frames(data)
    problems = []
    if frames.image_size != cfg.image_size:
        problems.append(f"images are {frames.image_size} px, the model takes {cfg.image_size} px")
    if frames.states.shape[1] != cfg.state_dim:
        problems.append(f"observation.state has {frames.states.shape[1]} dims, the model takes {cfg.state_dim}")
    if frames.actions.shape[1] != cfg.action_dim:
        problems.append(f"action has {frames.actions.shape[1]} dims, the model predicts {cfg.action_dim}")
    if problems:
        raise VlatrimError(f"dataset {str(data)!r} does not fit the model: " + "; ".join(problems))
    train_eps, val_eps = split_episodes(frames, val_fraction)
    episodes = val_eps or train_eps
    ds = ChunkDataset(frames, episodes, cfg.chunk_size, model.tokenize)
    need = num_batches * batch_size
    if len(ds) < batch_size:
        raise VlatrimError(f"dataset {str(data)!r} has {len(ds)} held-out samples; need at least one batch of {batch_size}")
    rows = _sample_rows(len(ds), min(need, len(ds) // batch_size * batch_size), seed).tolist()
    batches = [ds.__getitems__(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    return Calibration(batches, vla_loss_spec(model), sorted(set(frames.instructions.values())), model.tokenizer,
                       {"dataset": str(data), "episodes": "held-out" if val_eps else "all", "num_episodes": len(episodes),
                        "samples": len(rows), "batch_size": batch_size, "seed": seed})


def text_calibration(model: nn.Module, model_dir: str | Path, data: str | Path, num_batches: int, batch_size: int,
                     seed: int = 0, max_tokens: int = 32) -> Calibration:
    """Batches of the dataset's instructions for a transformers causal LM (next-token cross-entropy)."""
    from transformers import AutoTokenizer

    from vlatrim.analyze.losses import lm_loss_spec
    from vlatrim.data.lerobot import LeRobotDataset

    if not callable(getattr(model, "get_output_embeddings", None)) or model.get_output_embeddings() is None:
        raise VlatrimError(f"{type(model).__name__} has no LM head, so there is no loss to measure on text; "
                           f"analyze a VLA checkpoint that uses it as its backbone")
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError):
        raise VlatrimError(f"model directory {str(model_dir)!r} has no tokenizer; text calibration needs one") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = sorted(set(t for t in LeRobotDataset(data).tasks if t))
    if not texts:
        raise VlatrimError(f"dataset {str(data)!r} has no instructions in meta/tasks")
    need = num_batches * batch_size
    rows = [texts[i % len(texts)] for i in _sample_rows(max(need, len(texts)), need, seed).tolist()]
    batches = []
    device = next(model.parameters()).device
    for i in range(0, need, batch_size):
        enc = tok(rows[i:i + batch_size], padding="max_length", truncation=True, max_length=max_tokens,
                  return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)})
    return Calibration(batches, lm_loss_spec(max_tokens), texts, tok,
                       {"dataset": str(data), "texts": len(texts), "samples": need, "batch_size": batch_size,
                        "seed": seed})
