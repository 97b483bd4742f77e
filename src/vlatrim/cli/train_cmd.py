"""``vlatrim train``: train the reference VLA on a demonstration dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from vlatrim.cli.registry import COMMANDS
from vlatrim.cli.threads import apply_threads
from vlatrim.train.presets import train_preset_help


@COMMANDS.register("train")
@dataclass
class TrainCommand:
    """Train the reference VLA (vision encoder + language backbone + action head) by behaviour cloning."""

    data: str
    """LeRobotDataset v3 directory with images, state, actions and task instructions."""
    out: str
    """Run directory: new (or empty), or an interrupted run's with --resume."""
    preset: Annotated[str, tyro.conf.arg(help=train_preset_help())] = "default"
    backbone: str | None = None
    """Language backbone: minilm (pretrained all-MiniLM-L6-v2), a preset (tiny-bert, tiny-llama, tiny-qwen2,
    llama-24, qwen2-24), a transformers config .json, or a local from_pretrained directory. Default: the preset's."""
    steps: int | None = None
    """Optimizer steps. Default: the preset's."""
    batch_size: int | None = None
    """Samples per optimizer step. Default: the preset's."""
    lr: float | None = None
    """Peak learning rate (AdamW, linear warm-up then cosine decay). Default: the preset's."""
    seed: int | None = None
    """Seed of initialisation, data order and dropout. Default: the preset's (0)."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """Where to train; auto picks CUDA when available (with bf16 autocast). Default: auto."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] | None = None
    """Autocast precision: auto (bf16 on CUDA, fp32 on CPU), no, bf16 (also on CPUs with AVX512-BF16/AMX), fp16.
    Default: the preset's (quick, mt10: bf16 where the CPU has it)."""
    checkpoint_every: int | None = None
    """Steps between resumable checkpoints. Default: the preset's."""
    state: bool | None = None
    """Give the policy the proprioceptive state token (False: image and instruction only, as OpenVLA;
    docs/results.md shows a state-fed policy that ignores its camera). Default: the preset's (all: True)."""
    keypoints: int | None = None
    """Spatial-softmax keypoints of the conv encoder, given to the backbone as one more image token
    (0: none). They locate small things finer than the coarse token grid. Default: the preset's."""
    resume: bool = False
    """Continue the run in --out from its newest checkpoint (flags given must match the run's)."""

    threads: int | None = None
    """torch CPU threads. Default: the cores free when the command starts (with another job keeping one of
    2 cores busy that is 1 thread, which trains faster there than torch's default of 2)."""

    def run(self) -> None:
        apply_threads(self.threads)
        from vlatrim.data.frames import check_batch_fits
        from vlatrim.train.run import resolve_run_config, train_reference

        overrides = dict(backbone=self.backbone, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                         seed=self.seed, device=self.device, mixed_precision=self.mixed_precision,
                         checkpoint_every=self.checkpoint_every, use_state=self.state, conv_keypoints=self.keypoints)
        out = Path(self.out)
        if not self.resume and not (out.is_dir() and any(out.iterdir())):
            # The dataset and the batch it must fill, before the run directory is written (a non-empty --out
            # is train_reference's to refuse first).
            cfg = resolve_run_config(self.preset, dict(overrides))
            check_batch_fits(self.data, cfg["trainer"]["batch_size"], cfg["trainer"]["grad_accum"], cfg["val_fraction"])
        summary = train_reference(self.data, self.out, preset=self.preset, resume=self.resume, **overrides)
        if summary:
            held = summary.get("held_out")
            err = f", held-out action L1 {held['l1']:.4f}" if held else ""
            swap = held.get("image_swap") if held else None
            if swap:
                err += f" ({swap['l1_other_image']:.4f} with another episode's image)"
            print(f"trained {summary['steps']} steps ({summary['steps_per_s']:.2f} steps/s on {summary['device']})"
                  f"{err}; model in {self.out}")
