"""``vlatrim train``: train the reference VLA on a demonstration dataset, end to end.

Run directory layout (``--out``):

    config.json, model.safetensors, normalization.json, tokenizer/   the final model (a checkpoint)
    run_config.json     everything that defines the run, with the dataset's content fingerprint
                        (``inputs.data``); ``--resume`` requires it unchanged
    log.jsonl           mean losses, lr, grad norm every ``log_every`` steps
    checkpoints/step-N/ resumable checkpoints (model + optimizer/scheduler/RNG state)
    train.json          summary: settings, dataset, speed, final losses, held-out action error

The final model files are written last, ``config.json`` last of all, so ``--out`` is a loadable
checkpoint (``ReferenceVLA.from_pretrained``, ``vlatrim eval --policy``) only once training finished.
A run holds ``--out``'s lock (``vlatrim.utils.lock``) while it writes: a second run into it is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlatrim.errors import VlatrimError
from vlatrim.models.reference import ReferenceVLA, VLAConfig
from vlatrim.train.config import TrainerConfig
from vlatrim.train.data import ChunkDataset, DemoFrames, split_episodes
from vlatrim.train.evaluate import image_swap_error, offline_action_error
from vlatrim.train.presets import TRAIN_PRESETS
from vlatrim.train.trainer import Trainer
from vlatrim.utils.io import read_json, write_json_atomic
from vlatrim.utils.lock import run_dir_lock
from vlatrim.utils.rundir import check_same_inputs, input_fingerprints
from vlatrim.utils.seeding import seed_everything

RUN_CONFIG = "run_config.json"
SUMMARY = "train.json"


# VLAConfig fields a train run may override: field -> its vlatrim train flag.
MODEL_OVERRIDES: dict[str, str] = {"use_state": "--state", "conv_keypoints": "--keypoints"}


def resolve_run_config(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The full run settings: the preset, with non-None ``overrides`` applied.

    Args:
        preset: a name in ``TRAIN_PRESETS``.
        overrides: ``backbone``, the ``VLAConfig`` fields of ``MODEL_OVERRIDES`` and any ``TrainerConfig``
            field (``steps``, ``batch_size``, ``lr``, ``seed``, ``device``, ...); None values mean
            "the preset's".

    Returns:
        ``{"preset", "backbone", "model", "trainer", "val_fraction", "train_word_embeddings"}`` (validated).
    """
    p = TRAIN_PRESETS.get(preset)()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    backbone = overrides.pop("backbone", p.backbone)
    val_fraction = overrides.pop("val_fraction", p.val_fraction)
    train_word_embeddings = overrides.pop("train_word_embeddings", p.train_word_embeddings)
    model = dict(p.model)
    for key in MODEL_OVERRIDES:
        if key in overrides:
            model[key] = overrides.pop(key)
    trainer = TrainerConfig.from_dict({**p.trainer, **overrides})
    if "image_size" in model:
        raise VlatrimError(f"preset {preset!r} sets image_size; it must come from the dataset")
    VLAConfig.from_dict(model)  # validate the architecture before any data is read
    return {"preset": preset, "backbone": backbone, "model": _jsonable(model), "trainer": trainer.to_dict(),
            "val_fraction": val_fraction, "train_word_embeddings": train_word_embeddings}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _check_resume(saved: dict[str, Any], wanted: dict[str, Any], explicit: dict[str, Any]) -> None:
    # Only settings the user typed are compared: the rest come from the saved run.
    if wanted["preset"] != saved.get("preset") and explicit.get("preset") is not None:
        raise VlatrimError(f"cannot resume: --preset {wanted['preset']!r} differs from the run's {saved.get('preset')!r}")
    for key, value in explicit.items():
        if key == "preset" or value is None:
            continue
        if key == "backbone":
            have, flag = saved["backbone"], "--backbone"
        elif key in MODEL_OVERRIDES:
            flag = MODEL_OVERRIDES[key]
            have = saved["model"].get(key, VLAConfig.__dataclass_fields__[key].default)
        else:
            have, flag = saved["trainer"].get(key), f"--{key.replace('_', '-')}"
        if have != value:
            raise VlatrimError(f"cannot resume: {flag} {value!r} differs from the run's {have!r}; "
                               "drop the flag or start a new --out")


def train_reference(data: str | Path, out: str | Path, preset: str = "default", resume: bool = False,
                    load_frames: Callable[[Path], DemoFrames] | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """Train the reference VLA on a LeRobot demonstration dataset and evaluate it offline.

    Args:
        data: LeRobotDataset v3 directory (``vlatrim data metaworld`` writes one).
        out: run directory (new and empty, or an interrupted run's with ``resume``).
        preset: starting settings (``TRAIN_PRESETS``).
        resume: continue the run in ``out`` from its newest checkpoint.
        load_frames: dataset reader (default: ``vlatrim.train.data.read_demo_frames``).
        **overrides: ``backbone``, ``MODEL_OVERRIDES`` and ``TrainerConfig`` fields; None means "the
            preset's" (or, when resuming, "the run's"); an explicit value that differs from a resumed
            run's is an error.

    Returns:
        The ``train.json`` summary.
    """
    data, out = Path(data), Path(out)
    wanted = resolve_run_config(preset, overrides)
    with run_dir_lock(out):
        return _train_reference(data, out, preset, resume, load_frames, wanted, overrides)


def _train_reference(data: Path, out: Path, preset: str, resume: bool, load_frames: Callable[[Path], DemoFrames] | None,
                     wanted: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    inputs = input_fingerprints(data=data) if data.is_dir() else {}
    if resume:
        if not (out / RUN_CONFIG).is_file():
            raise VlatrimError(f"cannot resume: {str(out)!r} holds no {RUN_CONFIG} (not a vlatrim train run)")
        settings = read_json(out / RUN_CONFIG, what="run config")
        _check_resume(settings, wanted, {"preset": preset if preset != "default" else None, **overrides})
        if Path(settings["data"]).resolve() != data.resolve():
            raise VlatrimError(f"cannot resume: --data {str(data)!r} differs from the run's {settings['data']!r}")
        check_same_inputs(settings.get("inputs"), inputs, "the run in --out",
                          "resume with the dataset it was trained on, or start a new --out")
    else:
        if out.is_dir() and any(out.iterdir()):
            raise VlatrimError(f"--out {str(out)!r} is not empty; choose a new directory, or add --resume to continue it")
        settings = {**wanted, "data": str(data.resolve()), "inputs": inputs}
    if load_frames is None:
        from vlatrim.train.data import read_demo_frames as load_frames
    frames = load_frames(data)
    trainer_cfg = TrainerConfig.from_dict(settings["trainer"])
    model_cfg = VLAConfig.from_dict({**settings["model"], "image_size": frames.image_size})
    if resume and settings.get("image_size") not in (None, frames.image_size):
        raise VlatrimError(f"cannot resume: the dataset's images are {frames.image_size} px, the run's model takes "
                           f"{settings['image_size']} px")
    settings["image_size"] = frames.image_size
    train_eps, val_eps = split_episodes(frames, settings["val_fraction"])

    seed_everything(trainer_cfg.seed)
    model = ReferenceVLA.from_backbone(model_cfg, settings["backbone"])
    if not settings.get("train_word_embeddings", True):
        model.backbone.get_input_embeddings().weight.requires_grad_(False)
    # Statistics of the training episodes only: held-out episodes stay unseen.
    model.set_normalization(frames.stats(train_eps))
    train_set = ChunkDataset(frames, train_eps, model_cfg.chunk_size, model.tokenize)
    trainer = Trainer(model, train_set, trainer_cfg, out)
    if not resume:  # only now: a dataset, config or backbone that fails leaves no run directory behind
        trainer.create_run_dir(RUN_CONFIG, settings)
    t0 = time.perf_counter()
    result = trainer.fit(resume=resume)
    wall = time.perf_counter() - t0
    model = trainer.model
    if not trainer.accelerator.is_main_process:
        return {}
    summary: dict[str, Any] = {
        "settings": settings,
        "dataset": {"path": settings["data"], "frames": int(len(frames.images)), "image_size": frames.image_size,
                    "train_episodes": len(train_eps), "held_out_episodes": len(val_eps),
                    "train_samples": len(train_set), "tasks": {int(k): v for k, v in frames.instructions.items()}},
        "model": {"parameters": sum(p.numel() for p in model.parameters()),
                  "backbone_parameters": sum(p.numel() for p in model.backbone.parameters()),
                  "backbone_class": type(model.backbone).__name__},
        "steps": result.step, "resumed_from": result.resumed_from,
        "steps_per_s": result.steps_per_s, "wall_s_this_call": wall,
        "device": str(trainer.accelerator.device),
        "device_name": torch.cuda.get_device_name() if trainer.accelerator.device.type == "cuda" else "cpu",
        "mixed_precision": trainer.accelerator.mixed_precision,
        "final_log": result.last_log,
    }
    if val_eps:
        val_set = ChunkDataset(frames, val_eps, model_cfg.chunk_size, model.tokenize)
        summary["held_out"] = offline_action_error(model, val_set)
        summary["held_out"]["image_swap"] = image_swap_error(model, val_set)
    model.save_pretrained(out)
    write_json_atomic(out / SUMMARY, summary)
    return summary


__all__ = ["train_reference", "resolve_run_config"]
