"""``vlatrim recover``: fine-tune a pruned VLA on its task with one registered method, end to end.

Run directory layout (``--out``), the same as ``vlatrim train``'s:

    config.json, model.safetensors, normalization.json, tokenizer/   the recovered model (a checkpoint)
    prune.json, vocab_map.json   copied from the source checkpoint (what was cut), when present
    run_config.json     everything that defines the run (settings, source and teacher hashes, the
                        dataset's content fingerprint ``inputs.data``); a resume requires it unchanged
    log.jsonl           mean losses, lr, grad norm every ``log_every`` steps (averaged over processes)
    checkpoints/step-N/ trainable.safetensors + optimizer / scheduler / RNG state
    recover.json        the budget (steps x batch = samples, tokens, wall time), method, results

The model files are written after training, ``config.json`` last, so ``--out`` loads
(``ReferenceVLA.from_pretrained`` / ``vlatrim.prune.load_pruned`` / ``vlatrim eval --policy``) only
once the run finished.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vlatrim.data.frames import ChunkDataset
from vlatrim.errors import VlatrimError
from vlatrim.families import FAMILIES, PolicyFamily, family_of
from vlatrim.train.config import TrainerConfig
from vlatrim.train.recovery.base import RECOVERY_METHODS, load_trainable, save_trainable
from vlatrim.train.recovery.config import RecoverySettings
from vlatrim.train.trainer import Trainer
from vlatrim.utils.hashing import dir_sha256
from vlatrim.utils.io import read_json, write_json_atomic
from vlatrim.utils.lock import run_dir_lock
from vlatrim.utils.rundir import check_same_inputs, check_same_settings, input_fingerprints
from vlatrim.utils.seeding import seed_everything

RUN_CONFIG = "run_config.json"
SUMMARY = "recover.json"
PRUNE_JSON = "prune.json"
_CARRIED = (PRUNE_JSON, "vocab_map.json")  # side files of the source that describe the cut model
# Recovery is short next to training: fewer steps, checkpoints more often, a short warm-up.
RECOVERY_DEFAULTS: dict[str, Any] = dict(steps=500, batch_size=32, checkpoint_every=100, log_every=10)


def recovery_trainer_config(method: str, **overrides: Any) -> TrainerConfig:
    """``TrainerConfig`` for a recovery run: ``RECOVERY_DEFAULTS``, the method's default learning rate,
    a warm-up of 10% of the steps (at most 50), then the non-None ``overrides``."""
    cls = RECOVERY_METHODS.get(method)
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = {**RECOVERY_DEFAULTS, "lr": cls.default_lr, **given}
    cfg.setdefault("warmup_steps", min(50, int(cfg["steps"]) // 10))
    return TrainerConfig.from_dict(cfg)


def load_recoverable(path: str | Path, what: str) -> tuple[PolicyFamily, nn.Module]:
    """(family, model) for a checkpoint directory, pruned or not, whose family trains policies."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise VlatrimError(f"{what} {str(path)!r} is not a checkpoint directory (no config.json)")
    family = family_of(path)
    if why := family.refusal():
        raise VlatrimError(f"{what} {str(path)!r} cannot be fine-tuned: {why}")
    if not family.trains_policies:
        raise VlatrimError(f"{what} {str(path)!r} is a {family.name} model; recovery trains policies that compute an "
                           f"action loss (families: {', '.join(n for n in FAMILIES.in_order() if FAMILIES.get(n).trains_policies)})")
    return family, family.load(path)


class TeacherTokens(Dataset):
    """A ``ChunkDataset`` whose batches also carry the teacher's token ids (after a vocabulary cut the
    student's ids are not the teacher's): ``teacher_input_ids`` / ``teacher_attention_mask`` (B, L)."""

    def __init__(self, base: ChunkDataset, tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.base = base
        tasks = sorted(base.frames.instructions)  # the row order of base.input_ids
        self.ids, self.mask = tokenize([base.frames.instructions[t] for t in tasks])

    def __len__(self) -> int:
        return len(self.base)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = self.base.__getitems__(indices)
        t = self.base.task_row[self.base.rows[torch.as_tensor(indices, dtype=torch.long)]]
        batch["teacher_input_ids"], batch["teacher_attention_mask"] = self.ids[t], self.mask[t]
        return batch


def _tokens_differ(student, teacher, texts: list[str]) -> bool:
    a, b = student.tokenize(texts), teacher.tokenize(texts)
    return not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))


def recover(model: str | Path, data: str | Path, out: str | Path, settings: RecoverySettings | None = None,
            trainer: TrainerConfig | None = None, teacher: str | Path | None = None,
            resume: bool = False) -> dict[str, Any]:
    """Fine-tune a (pruned) policy on a demonstration dataset with its family's loss; write ``recover.json``.

    Args:
        model: the checkpoint to recover (``vlatrim prune`` output, or any checkpoint of a policy family).
        data: LeRobotDataset v3 directory.
        out: run directory: new and empty, or an interrupted run's with ``resume``.
        settings: method and its settings (default: full fine-tuning).
        trainer: optimizer / budget settings (default: ``recovery_trainer_config(method)``).
        teacher: the unpruned model, for ``distill``.
        resume: continue the run in ``out`` from its newest checkpoint; the models (by content hash),
            data and settings must be the run's.

    Returns:
        The ``recover.json`` summary (empty on non-main processes of a distributed run).

    Raises:
        VlatrimError: bad models, teacher, LoRA targets, data or resume directory, before training;
            a non-finite loss during training (the last good checkpoint is kept).
    """
    settings = settings or RecoverySettings()
    trainer = trainer or recovery_trainer_config(settings.method)
    with run_dir_lock(out):
        return _recover(Path(model), Path(data), Path(out), settings, trainer, teacher, resume)


def _recover(model_dir: Path, data: Path, out: Path, settings: RecoverySettings, trainer: TrainerConfig,
             teacher: str | Path | None, resume: bool) -> dict[str, Any]:
    if RECOVERY_METHODS.get(settings.method).needs_teacher and teacher is None:
        raise VlatrimError(f"method {settings.method!r} needs --teacher (the unpruned model the student was cut from)")
    if teacher is not None and not RECOVERY_METHODS.get(settings.method).needs_teacher:
        raise VlatrimError(f"--teacher is only used by --method distill, not {settings.method!r}")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise VlatrimError(f"--out {str(out)!r} is not empty; choose a new directory, or add --resume to continue it")
    if resume and not (out / RUN_CONFIG).is_file():
        raise VlatrimError(f"cannot resume: {str(out)!r} holds no {RUN_CONFIG} (not a vlatrim recover run)")

    family, student = load_recoverable(model_dir, "--model")
    if settings.method not in family.recovery_methods:
        raise VlatrimError(f"--method {settings.method} does not apply to a {family.name} model; valid: "
                           f"{', '.join(family.recovery_methods) or '(none)'}")
    if settings.method == "lora":
        scope, also = family.lora_defaults(student)
        settings = dataclasses.replace(settings, lora=dataclasses.replace(
            settings.lora, scope=scope if settings.lora.scope is None else settings.lora.scope,
            train_also=also if settings.lora.train_also is None else settings.lora.train_also))
    method = RECOVERY_METHODS.get(settings.method)(settings, family)
    prune_info = read_json(model_dir / PRUNE_JSON, "prune.json") if (model_dir / PRUNE_JSON).is_file() else None
    wanted: dict[str, Any] = {
        "source": {"path": str(model_dir.resolve()), "sha256": dir_sha256(model_dir)},
        "teacher": None, "data": str(data.resolve()),
        "recovery": settings.method_dict(), "trainer": trainer.to_dict(),
    }
    teacher_model = None
    if teacher is not None:
        t_family, teacher_model = load_recoverable(teacher, "--teacher")
        if t_family is not family:
            raise VlatrimError(f"--teacher is a {t_family.name} model and --model a {family.name} model; distil from "
                               "the model the student was pruned from")
        wanted["teacher"] = {"path": str(Path(teacher).resolve()), "sha256": dir_sha256(teacher)}
        method.attach_teacher(teacher_model, student, prune_info.get("kept_blocks") if prune_info else None)
    inputs = input_fingerprints(data=data) if data.is_dir() else {}
    if resume:
        saved = read_json(out / RUN_CONFIG, "run config")
        remedy = "resume with the same model, data and flags, or start a new --out"
        check_same_settings({k: v for k, v in saved.items() if k in wanted}, wanted, "the run in --out", remedy)
        check_same_inputs(saved.get("inputs"), inputs, "the run in --out", remedy)

    train_samples = family.dataset(student, data, "train", settings.val_fraction)
    val_samples = family.dataset(student, data, "held_out", settings.val_fraction)
    train_set: Dataset = train_samples.data
    if teacher_model is not None and isinstance(train_set, ChunkDataset) and \
            _tokens_differ(student, teacher_model, train_samples.instructions):
        train_set = TeacherTokens(train_set, teacher_model.tokenize)

    seed_everything(trainer.seed)  # LoRA initialisation draws from torch's RNG
    if settings.gradient_checkpointing:
        family.handle(student).owner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params_total = sum(p.numel() for p in student.parameters())
    seq_len = family.sequence_length(student, train_set.__getitems__([0]))
    trained = method.prepare(student)
    params_trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    if not params_trainable:
        raise VlatrimError(f"method {settings.method!r} left no parameter to train")
    loop = Trainer(trained, train_set, trainer, out, loss_fn=method.loss, save_model=save_trainable,
                   load_model=load_trainable)  # checks batch vs processes before anything is written
    if not resume:  # every process has checked --out above; only then is it written
        loop.create_run_dir(RUN_CONFIG, {**wanted, "inputs": inputs})

    t0 = time.perf_counter()
    result = loop.fit(resume=resume)
    wall = time.perf_counter() - t0
    if not loop.accelerator.is_main_process:
        return {}
    final = method.finalize(loop.model).eval()
    summary: dict[str, Any] = {
        "schema_version": 1,
        "method": settings.method,
        "source": wanted["source"],
        "teacher": wanted["teacher"],
        "pruned": ({"kept_blocks": prune_info.get("kept_blocks"), "source": prune_info.get("source")}
                   if prune_info else None),
        "family": family.name,
        "data": {"path": wanted["data"], "frames": train_samples.description.get("frames"),
                 "train_episodes": train_samples.description.get("num_episodes"),
                 "held_out_episodes": val_samples.description.get("num_episodes"), "train_samples": len(train_set)},
        "budget": {"steps": trainer.steps, "batch_size": trainer.batch_size,
                   "samples": trainer.steps * trainer.batch_size,
                   "sequence_length": seq_len,
                   "tokens": trainer.steps * trainer.batch_size * seq_len if seq_len is not None else None,
                   "epochs": trainer.steps * trainer.batch_size / len(train_set),
                   "lr": trainer.lr, "processes": loop.accelerator.num_processes,
                   "wall_s_this_call": round(wall, 3), "steps_this_call": result.step - result.resumed_from,
                   "steps_per_s": result.steps_per_s,
                   "samples_per_s": result.steps_per_s * trainer.batch_size},
        "params": {"total": params_total, "trainable": params_trainable},
        "settings": {"recovery": wanted["recovery"], "trainer": wanted["trainer"]},
        "steps": result.step, "resumed_from": result.resumed_from,
        "device": str(loop.accelerator.device),
        "device_name": torch.cuda.get_device_name() if loop.accelerator.device.type == "cuda" else "cpu",
        "mixed_precision": loop.accelerator.mixed_precision,
        "final_log": result.last_log,
    }
    if len(val_samples.data):
        from vlatrim.train.evaluate import offline_action_error

        # Samples of the final model: after a LoRA merge or a vocabulary cut its tokenizer is the one to use.
        held = family.dataset(final, data, "held_out", settings.val_fraction).data
        summary["held_out"] = offline_action_error(final, held, predict=lambda b: family.predict_batch(final, b))
    for name in _CARRIED:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    family.save(final, out)
    write_json_atomic(out / SUMMARY, summary)
    return summary


__all__ = ["recover", "recovery_trainer_config", "load_recoverable", "TeacherTokens", "RUN_CONFIG", "SUMMARY"]
