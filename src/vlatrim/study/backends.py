"""The library calls a study makes for pieces that live in other packages and may be absent from a
build: demonstration generation (``vlatrim.data``), closed-loop evaluation (``vlatrim.sim``) and
recovery fine-tuning (``vlatrim.train``). Each raises ``StageUnavailable`` naming the missing module;
the study then records the stage as unavailable (in study.json and the report) instead of a number.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


class StageUnavailable(Exception):
    """A stage's library is not part of this build; the message names it."""


def _module(name: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise StageUnavailable(f"{what} needs {name}, which this build of vlatrim does not have") from None
        raise


def generate_demos(tasks: list[str], episodes_per_task: int, image_size: int, seed: int, out: Path,
                   progress: bool = True) -> dict[str, Any]:
    """Scripted-expert demonstrations into a LeRobot v3 directory ``out``; returns the generation report."""
    mod = _module("vlatrim.sim.backends.metaworld.demos", "demonstration generation")
    report = mod.generate_demos(mod.DemoConfig(tasks=list(tasks), episodes_per_task=episodes_per_task,
                                               image_size=image_size, seed=seed), out, progress=progress)
    return {"episodes": report.episodes, "frames": report.frames, "per_task": report.per_task,
            "failed": report.failed, "attempts": report.attempts}


def closed_loop_eval(policy_dir: Path, tasks: list[str], episodes: int, max_steps: int, image_size: int,
                     seed: int, workers: int, device: str, out: Path, progress: bool = True) -> dict[str, Any]:
    """Success rate of a checkpoint in Meta-World on unseen starts (``vlatrim.sim.evaluate``); writes
    ``out/eval.json`` (``out`` must be absent or empty).

    Returns:
        ``{"success_rate": mean over tasks, "pooled_success", "wilson95_pooled", "per_task": {task: rate},
        "episodes": per task}``.
    """
    mod = _module("vlatrim.sim.evaluate", "closed-loop evaluation")
    from vlatrim.families import load_policy

    policy = load_policy(str(policy_dir), device=device)
    cfg = mod.EvalConfig(tasks=list(tasks), episodes=episodes, workers=workers, max_steps=max_steps, seed=seed,
                         image_size=image_size)
    result, videos = mod.evaluate(policy, cfg, policy_name=str(policy_dir), progress=progress)
    mod.write_eval(out, result, videos)
    o = result.overall
    return {"success_rate": o["mean_success"], "pooled_success": o["pooled_success"],
            "wilson95_pooled": o["wilson95_pooled"], "errors": o["errors"],
            "per_task": {t: v["success_rate"] for t, v in result.per_task.items()}, "episodes": episodes,
            "env_steps_per_second": result.timing.get("env_steps_per_second")}


def recover(model_dir: Path, data: Path, out: Path, method: str, steps: int, batch_size: int, lr: float | None,
            seed: int, device: str, teacher: Path | None, val_fraction: float,
            mixed_precision: str | None = None) -> dict[str, Any]:
    """Recovery fine-tuning of ``model_dir`` into the checkpoint directory ``out``
    (``vlatrim.train.recovery.recover``); resumes inside ``out`` when it holds an interrupted run.

    Args:
        teacher: the unpruned model; used by ``distill`` only.
        val_fraction: share of each task's episodes held out (the base model's, so the held-out
            episodes stay unseen by every variant).
        mixed_precision: autocast precision (``no``, ``bf16``, ``fp16``); None: recovery's default.
    Returns:
        The recover.json summary.
    """
    mod = _module("vlatrim.train.recovery", "recovery fine-tuning")
    settings = mod.RecoverySettings(method=method, val_fraction=val_fraction)
    trainer = mod.recovery_trainer_config(method, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
                                          checkpoint_every=max(25, steps // 4), mixed_precision=mixed_precision)  # a checkpoint holds the optimizer too: a few per run
    needs_teacher = mod.RECOVERY_METHODS.get(method).needs_teacher
    return mod.recover(model_dir, data, out, settings, trainer, teacher=teacher if needs_teacher else None,
                       resume=(out / "run_config.json").is_file())
