"""Named training presets: a backbone, VLA architecture overrides and trainer settings.

Each preset registers itself in ``TRAIN_PRESETS``; ``vlatrim train --preset NAME`` starts from it and
explicit flags override it. The image size is not part of a preset: it comes from the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlatrim.registry import Registry
from vlatrim.utils.hardware import cpu_has_native_bf16


@dataclass
class Preset:
    """A starting point for a training run.

    Attributes:
        backbone: backbone spec (``vlatrim.models.backbones``).
        model: ``VLAConfig`` field overrides (never ``image_size``).
        trainer: ``TrainerConfig`` field overrides.
        val_fraction: share of each task's episodes held out for the offline action error.
        train_word_embeddings: update the backbone's input word embeddings. With a handful of fixed
            instructions only a few rows ever get gradients, yet AdamW would update the whole
            vocabulary matrix (half of MiniLM's parameters) every step; freezing it saves that time.
        description: one line for ``--help`` and the docs.
    """

    backbone: str = "minilm"
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.1
    train_word_embeddings: bool = True
    description: str = ""


TRAIN_PRESETS: Registry[Callable[[], Preset]] = Registry("training preset")


@TRAIN_PRESETS.register("default")
def _default() -> Preset:
    return Preset(
        backbone="minilm",
        model=dict(chunk_size=4, action_head="continuous", continuous_loss="l1"),
        trainer=dict(steps=3000, batch_size=32, lr=3e-4, warmup_steps=100, checkpoint_every=500),
        description="pretrained MiniLM-L6, conv encoder, chunk of 4, L1; 3000 steps at batch 32")


@TRAIN_PRESETS.register("quick")
def _quick() -> Preset:
    # The CPU preset (docs/training.md has what it reached): MiniLM-L6 as in the H100 probe of
    # REFERENCE.md, with a 5-stage conv encoder (96 px -> 3x3 = 9 image tokens) to make steps cheap.
    # bf16 autocast where the CPU computes bf16 natively (AVX512-BF16/AMX): ~1.5x faster steps than
    # fp32 there; elsewhere fp32 (emulated bf16 would be slower). What it reached: docs/training.md.
    return Preset(
        backbone="minilm",
        model=dict(chunk_size=4, conv_channels=(32, 64, 96, 128, 128), max_text_tokens=12),
        trainer=dict(steps=1600, batch_size=32, lr=5e-4, warmup_steps=50, checkpoint_every=250, log_every=25,
                     mixed_precision="bf16" if cpu_has_native_bf16() else "auto"),
        train_word_embeddings=False,
        description="CPU: MiniLM-L6, 9 image tokens at 96 px, chunk of 4, L1; 1600 steps at batch 32")


@TRAIN_PRESETS.register("mt10")
def _mt10() -> Preset:
    # All ten MT10 tasks x 50 demos, sized for the 2-core CPU (89 min measured in bf16): the quick
    # preset's 9-token encoder plus one token of 32 spatial-softmax keypoints, ~10x its steps. 16 text
    # tokens hold the longest MT10 instruction (peg-insert-side: 13). No state token: with it the
    # policy fitted the demos from the hand position and ignored the camera. Reached 0.706 (0.446
    # without the keypoints, 0.426 with the state token and the earlier conv init; docs/training.md).
    return Preset(
        backbone="minilm",
        model=dict(chunk_size=4, conv_channels=(32, 64, 96, 128, 128), conv_keypoints=32, max_text_tokens=16,
                   use_state=False),
        trainer=dict(steps=15000, batch_size=32, lr=5e-4, warmup_steps=300, checkpoint_every=1000, log_every=50,
                     mixed_precision="bf16" if cpu_has_native_bf16() else "auto"),
        train_word_embeddings=False,
        description="MT10 x 50 demos: MiniLM-L6, 9 image tokens + 32 keypoints at 96 px, no state token, "
                    "chunk of 4, L1; 15000 steps at batch 32")


@TRAIN_PRESETS.register("tiny")
def _tiny() -> Preset:
    return Preset(
        backbone="tiny-bert",
        model=dict(chunk_size=4, conv_channels=(8, 16, 16, 16), max_text_tokens=8),
        trainer=dict(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=10, log_every=5),
        description="smoke test: 2-block width-32 BERT, 20 steps")
