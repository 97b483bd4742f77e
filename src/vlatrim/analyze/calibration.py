"""Calibration batches and the loss for a model and a dataset directory, through the model's family.

A VLA is measured against its own training loss on held-out episodes of a LeRobot dataset (the last
``val_fraction`` of each task's episodes, as in training; all episodes when none is held out); a
transformers text model against next-token cross-entropy on the dataset's instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlatrim.analyze.base import LossSpec
from vlatrim.analyze.losses import family_loss_spec
from vlatrim.errors import VlatrimError
from vlatrim.families import PolicyFamily


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


def calibration(family: PolicyFamily, model: nn.Module, data: str | Path, num_batches: int, batch_size: int,
                seed: int = 0, val_fraction: float = 0.1) -> Calibration:
    """``num_batches`` fixed batches of ``batch_size`` samples and the family's loss.

    Policies draw held-out samples without repetition (fewer batches when fewer samples exist); a
    text model's few instructions are cycled to fill every batch.

    Raises:
        VlatrimError: the dataset lacks what the model needs, or holds less than one batch.
    """
    samples = family.dataset(model, Path(data), "held_out", val_fraction)
    where = "held-out"
    if family.trains_policies and len(samples.data) == 0:
        samples, where = family.dataset(model, Path(data), "all", val_fraction), "all"
    ds, n = samples.data, len(samples.data)
    need = num_batches * batch_size
    if not family.trains_policies:
        rows = [i % n for i in _sample_rows(max(need, n), need, seed).tolist()]
    else:
        if n < batch_size:
            raise VlatrimError(f"dataset {str(data)!r} has {n} {where} samples; need at least one batch of {batch_size}")
        rows = _sample_rows(n, min(need, n // batch_size * batch_size), seed).tolist()
    device = next(model.parameters()).device
    batches = []
    for i in range(0, len(rows), batch_size):
        b = ds.__getitems__(rows[i:i + batch_size])
        batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()})
    if family.trains_policies:
        desc = {"dataset": str(data), "episodes": where, "num_episodes": samples.description.get("num_episodes"),
                "samples": len(rows), "batch_size": batch_size, "seed": seed}
    else:
        desc = {"dataset": str(data), "texts": n, "samples": need, "batch_size": batch_size, "seed": seed}
    tokenizer = samples.extra.get("tokenizer", getattr(model, "tokenizer", None))
    return Calibration(batches, family_loss_spec(family, model), samples.instructions, tokenizer, desc)
