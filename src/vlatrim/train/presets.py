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
        description: one line for ``--help`` and the docs: what the preset is.
        cost: what a run costs, for ``--help``: a wall time measured on this repository's 2-core CPU
            with the file that recorded it, or "not measured". Never an estimate.
        tasks: the Meta-World tasks the preset was sized and measured on (None: not tied to a task
            set). A study preset of the same name must train on these (``tests/test_presets.py``).
    """

    backbone: str = "minilm"
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.1
    train_word_embeddings: bool = True
    description: str = ""
    cost: str = "not measured"
    tasks: tuple[str, ...] | None = None


TRAIN_PRESETS: Registry[Callable[[], Preset]] = Registry("training preset")


@TRAIN_PRESETS.register("default")
def _default() -> Preset:
    return Preset(
        backbone="minilm",
        model=dict(chunk_size=4, action_head="continuous", continuous_loss="l1"),
        trainer=dict(steps=3000, batch_size=32, lr=3e-4, warmup_steps=100, checkpoint_every=500),
        description="pretrained MiniLM-L6, conv encoder (96 px -> 36 image tokens), chunk of 4, L1; "
                    "3000 steps at batch 32",
        cost="not measured end to end; one step 1.01 s in fp32, 0.63 s in bf16 on the 2-core CPU "
             "(benchmarks/results/train.json)")


@TRAIN_PRESETS.register("quick")
def _quick() -> Preset:
    # The CPU preset: the pretrained MiniLM-L6 backbone with a 5-stage conv encoder (96 px -> 3x3 = 9
    # image tokens) to make steps cheap. bf16 autocast where the CPU computes bf16 natively
    # (AVX512-BF16/AMX): 1.52x faster steps than fp32 there (benchmarks/results/train.json); elsewhere
    # fp32 (emulated bf16 would be slower). Sized on 4 tasks x 40 demos, where it reached 0.81 closed-loop
    # success (docs/results.md).
    return Preset(
        backbone="minilm",
        model=dict(chunk_size=4, conv_channels=(32, 64, 96, 128, 128), max_text_tokens=12),
        trainer=dict(steps=1600, batch_size=32, lr=5e-4, warmup_steps=50, checkpoint_every=250, log_every=25,
                     mixed_precision="bf16" if cpu_has_native_bf16() else "auto"),
        train_word_embeddings=False,
        description="CPU preset for a few tasks (made on drawer-close, button-press-topdown, drawer-open, "
                    "window-open x 40 demos): MiniLM-L6, 9 image tokens at 96 px, chunk of 4, L1; 1600 steps at batch 32",
        cost="536 s (8.9 min) of training on the 2-core CPU in bf16, 4 tasks x 40 demos "
             "(benchmarks/results/quick_preset.json); fp32: not measured end to end (0.43 s/step, train.json)",
        tasks=("drawer-close", "button-press-topdown", "drawer-open", "window-open"))


@TRAIN_PRESETS.register("mt10")
def _mt10() -> Preset:
    # All ten MT10 tasks x 50 demos, sized for the 2-core CPU: the quick preset's 9-token encoder plus
    # one token of 32 spatial-softmax keypoints, ~10x its steps. 16 text tokens hold the longest MT10
    # instruction (peg-insert-side: 13). No state token: with it the policy fitted the demos from the
    # hand position and ignored the camera. Reached 0.706 closed-loop success (docs/results.md).
    return Preset(
        backbone="minilm",
        model=dict(chunk_size=4, conv_channels=(32, 64, 96, 128, 128), conv_keypoints=32, max_text_tokens=16,
                   use_state=False),
        trainer=dict(steps=15000, batch_size=32, lr=5e-4, warmup_steps=300, checkpoint_every=1000, log_every=50,
                     mixed_precision="bf16" if cpu_has_native_bf16() else "auto"),
        train_word_embeddings=False,
        description="MT10 x 50 demos: MiniLM-L6, 9 image tokens + 32 keypoints at 96 px, no state token, "
                    "chunk of 4, L1; 15000 steps at batch 32",
        cost="5311 s (89 min) of training on the 2-core CPU in bf16, MT10 x 50 demos "
             "(benchmarks/results/mt10_preset.json)",
        tasks=("mt10",))


@TRAIN_PRESETS.register("tiny")
def _tiny() -> Preset:
    return Preset(
        backbone="tiny-bert",
        model=dict(chunk_size=4, conv_channels=(8, 16, 16, 16), max_text_tokens=8),
        trainer=dict(steps=20, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=10, log_every=5),
        description="smoke test: 2-block width-32 BERT (random init), 20 steps at batch 8",
        cost="not measured")


def train_preset_help() -> str:
    """The ``--preset`` help of ``vlatrim train``: every preset, what it is and what it costs."""
    lines = []
    for name in TRAIN_PRESETS.names():
        p = TRAIN_PRESETS.get(name)()
        lines.append(f"{name}: {p.description}. Cost: {p.cost}.")
    return "\n".join(["Starting settings, which flags override.", *lines])
