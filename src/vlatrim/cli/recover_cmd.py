"""``vlatrim recover``: fine-tune a pruned VLA so its task performance comes back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlatrim.cli.registry import COMMANDS
from vlatrim.cli.threads import apply_threads


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


@COMMANDS.register("recover")
@dataclass
class RecoverCommand:
    """Recovery fine-tuning of a pruned VLA: full, LoRA (merged on save) or distillation from the unpruned teacher."""

    model: str
    """Checkpoint to recover (a `vlatrim prune` output directory, or any reference-VLA checkpoint)."""
    data: str
    """LeRobotDataset v3 directory with the task's demonstrations."""
    out: str
    """Run directory: new (or empty), or an interrupted run's with --resume. Ends as a loadable checkpoint."""
    method: Literal["full", "lora", "distill"] = "full"
    """full: the parameters the model's family trains in full (by default every trainable one; a LeRobot
    SmolVLA: what its config leaves trainable plus the VLM text layers; see docs/lerobot.md); lora: peft adapters (scope from the model's family), merged on save;
    distill: full fine-tuning with the teacher's actions (and optionally hidden states) as extra targets."""
    train_also: str = ""
    """Comma-separated parameter-name prefixes trained in full besides the family's set (--method full and
    distill), e.g. model.vlm_with_expert.vlm.model.vision_model after a SmolVLA vision cut."""
    teacher: str | None = None
    """The unpruned model (checkpoint directory) to distil from; --method distill only."""
    steps: int = 500
    """Optimizer steps (the budget is steps x batch size samples; recorded in recover.json)."""
    batch_size: int = 32
    """Samples per optimizer step (global: split over processes under accelerate launch)."""
    lr: float | None = None
    """Peak learning rate (AdamW, warm-up then cosine). Default: 1e-4 (full, distill), 5e-4 (lora)."""
    warmup_steps: int | None = None
    """Linear warm-up steps. Default: 10% of --steps, at most 50."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (same budget, less memory)."""
    seed: int = 0
    """Seed of data order, dropout and LoRA initialisation."""
    checkpoint_every: int = 100
    """Steps between resumable checkpoints (trainable weights + optimizer + RNG state)."""
    log_every: int = 10
    """Steps between log.jsonl records."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto picks CUDA when available. Under accelerate launch, the launcher decides."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision: auto = bf16 on CUDA, fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute backbone activations in the backward pass (for large backbones)."""
    val_fraction: float = 0.1
    """Share of each task's episodes held out for the offline action error in recover.json."""
    resume: bool = False
    """Continue the run in --out from its newest checkpoint (same model, data and flags required)."""
    lora_rank: int = 16
    """LoRA rank r."""
    lora_alpha: float = 32.0
    """LoRA alpha (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input."""
    lora_targets: str = "all-linear"
    """Comma-separated linear modules to adapt (suffixes of their dotted paths, e.g. q_proj,v_proj), or all-linear."""
    lora_scope: str | None = None
    """Module path under which LoRA targets are searched ('' = the whole model). Default: the model family's
    (the reference VLA: 'backbone')."""
    lora_train_also: str | None = None
    """Comma-separated parameter-name prefixes trained in full next to the adapters ('' = adapters only).
    Default: the model family's (the reference VLA: 'head,action_queries')."""
    distill_task_weight: float = 1.0
    """Weight of the task (behaviour-cloning) loss in --method distill."""
    distill_action_weight: float = 1.0
    """Weight of the student-vs-teacher action distance (normalized units)."""
    distill_action_distance: Literal["l1", "mse"] = "l1"
    """Distance between continuous action predictions (a discrete head uses KL)."""
    distill_hidden_weight: float = 0.0
    """Weight of aligning each kept block's output to its teacher block (prune.json kept_blocks); 0 = off."""
    distill_temperature: float = 1.0
    """Softmax temperature of the KL term (discrete action head)."""

    threads: int | None = None
    """torch CPU threads. Default: the cores free when the command starts (with another job keeping one of
    2 cores busy that is 1 thread, which trains faster there than torch's default of 2)."""

    def _reaches_the_data(self) -> bool:
        """Whether a new run gets past recover()'s own earlier refusals (teacher, --out, the model's family and
        --method) to the dataset: only then is the batch checked here, so those keep their precedence."""
        from pathlib import Path

        from vlatrim.errors import VlatrimError
        from vlatrim.families import family_of
        from vlatrim.train.recovery import RECOVERY_METHODS

        out = Path(self.out)
        if self.resume or (out.is_dir() and any(out.iterdir())):
            return False
        if RECOVERY_METHODS.get(self.method).needs_teacher != (self.teacher is not None):
            return False
        if not (Path(self.model) / "config.json").is_file():
            return False
        try:
            family = family_of(self.model)
        except VlatrimError:
            return False
        return family.trains_policies and self.method in family.recovery_methods

    def run(self) -> None:
        apply_threads(self.threads)
        from vlatrim.train.recovery import (
            DistillSettings,
            LoraSettings,
            RecoverySettings,
            recover,
            recovery_trainer_config,
        )

        settings = RecoverySettings(
            method=self.method, val_fraction=self.val_fraction, gradient_checkpointing=self.gradient_checkpointing,
            train_also=_names(self.train_also),
            lora=LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
                              targets=_names(self.lora_targets), scope=self.lora_scope,
                              train_also=None if self.lora_train_also is None else _names(self.lora_train_also)),
            distill=DistillSettings(task_weight=self.distill_task_weight, action_weight=self.distill_action_weight,
                                    action_distance=self.distill_action_distance,
                                    hidden_weight=self.distill_hidden_weight, temperature=self.distill_temperature))
        trainer = recovery_trainer_config(
            self.method, steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
            grad_accum=self.grad_accum, seed=self.seed, checkpoint_every=self.checkpoint_every,
            log_every=self.log_every, device=self.device, mixed_precision=self.mixed_precision)
        if self._reaches_the_data():  # the dataset and the batch it must fill, before the run directory is written
            from vlatrim.data.frames import check_batch_fits

            check_batch_fits(self.data, trainer.batch_size, trainer.grad_accum, self.val_fraction)
        summary = recover(self.model, self.data, self.out, settings=settings, trainer=trainer, teacher=self.teacher,
                          resume=self.resume)
        if summary:
            b = summary["budget"]
            held = summary.get("held_out")
            err = f", held-out action L1 {held['l1']:.4f}" if held else ""
            print(f"recovered with {summary['method']}: {b['steps']} steps x {b['batch_size']} = {b['samples']} samples "
                  f"({b['samples_per_s']:.1f} samples/s on {summary['device']}){err}; model in {self.out}")
