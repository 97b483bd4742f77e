"""The one training loop of vlatrim: behaviour cloning now, recovery fine-tuning (full / LoRA /
distillation) on top of it later.

What a caller plugs in:
- ``loss_fn(model, batch) -> {"loss": scalar, ...}``: the objective. The default calls the model
  (``ReferenceVLA.forward`` is its action loss). A distillation loss adds teacher terms here; every
  0-d entry of the dict is averaged into the log.
- ``param_groups(model) -> list of AdamW parameter groups``: what trains (default: every parameter
  with ``requires_grad``, no weight decay on 1-d tensors). LoRA wraps the model before the Trainer
  sees it; partial fine-tuning freezes or selects here.
- ``save_model(model, dir)`` / ``load_model(model, dir)``: how a checkpoint stores the weights
  (default: ``model.save_pretrained`` and a strict safetensors load of ``model.safetensors``).

Device placement, autocast, gradient accumulation and data parallelism come from
``accelerate.Accelerator``: the same code runs on CPU, one GPU, or under ``accelerate launch``
(DDP; FSDP would additionally need a sharded optimizer-state save, not done here).

A checkpoint ``<run>/checkpoints/step-NNNNNNN/`` holds the model files plus ``trainer_state.pt``
(optimizer, scheduler, torch RNG; read back with ``torch.load(weights_only=True)``) and
``trainer_state.json`` (step, samples seen). The data order is a pure function of (seed, step)
(``ResumableBatchSampler``), so resuming continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vlatrim.errors import VlatrimError
from vlatrim.models.checkpoint import load_weights, write_checkpoint
from vlatrim.train.config import TrainerConfig
from vlatrim.train.data import ResumableBatchSampler, collate_batch
from vlatrim.utils.hardware import cpu_has_native_bf16
from vlatrim.utils.io import atomic_dir, read_json

LossFn = Callable[[nn.Module, dict[str, Any]], dict[str, Any]]
CHECKPOINTS_DIR = "checkpoints"
LOG_FILE = "log.jsonl"
STATE_PT = "trainer_state.pt"
STATE_JSON = "trainer_state.json"
# Settings that change the trained weights: a checkpoint resumes only into a run with the same ones
# (device, logging and checkpoint cadence may differ).
RESULT_SETTINGS = ("steps", "batch_size", "grad_accum", "lr", "weight_decay", "beta1", "beta2", "warmup_steps",
                   "min_lr_ratio", "grad_clip", "seed")


def default_loss(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """Behaviour cloning: the model's own action loss (``ReferenceVLA.forward``)."""
    return model(batch)


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: decayed matrices, undecayed biases/norms/1-d tensors."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise VlatrimError("the model has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def default_save_model(model: nn.Module, path: Path) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(path)
    else:
        write_checkpoint(path, {"model_type": type(model).__name__}, model)


def default_load_model(model: nn.Module, path: Path) -> None:
    load_weights(path, model, device=next(model.parameters()).device)


@dataclass
class TrainResult:
    """What ``Trainer.fit`` did.

    Attributes:
        step: the last completed optimizer step.
        finished: whether the run reached ``config.steps``.
        last_log: the last JSONL log record (mean losses of the last logging window).
        steps_per_s: optimizer steps per second in this call (excluding checkpoint writing).
        resumed_from: the step this call started at (0 for a fresh run).
    """

    step: int
    finished: bool
    last_log: dict[str, Any] = field(default_factory=dict)
    steps_per_s: float = 0.0
    resumed_from: int = 0


class Trainer:
    """AdamW + linear warm-up + cosine decay, gradient clipping, periodic checkpoints, exact resume.

    Args:
        model: the model to train (unwrapped; the Trainer wraps it through Accelerate).
        train_data: a map-style dataset; with ``__getitems__`` it may return whole collated batches.
        config: optimisation / checkpoint / logging settings.
        run_dir: where ``checkpoints/`` and ``log.jsonl`` go (created if needed).
        loss_fn: objective, see the module docstring.
        param_groups: ``model -> AdamW param groups``; default ``default_param_groups``.
        save_model / load_model: how checkpoints store and restore the weights.
        accelerator: an ``accelerate.Accelerator`` to use; default one is built from ``config``
            (device, mixed precision, gradient accumulation, global batches split over processes).
    """

    def __init__(self, model: nn.Module, train_data: Dataset, config: TrainerConfig, run_dir: str | Path,
                 loss_fn: LossFn = default_loss,
                 param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
                 save_model: Callable[[nn.Module, Path], None] = default_save_model,
                 load_model: Callable[[nn.Module, Path], None] = default_load_model,
                 accelerator: Any = None) -> None:
        self.model = model
        self.train_data = train_data
        self.config = config
        self.run_dir = Path(run_dir)
        self.loss_fn = loss_fn
        self.param_groups = param_groups or (lambda m: default_param_groups(m, config.weight_decay))
        self.save_model = save_model
        self.load_model = load_model
        self.accelerator = accelerator or make_accelerator(config)
        n_proc = self.accelerator.num_processes
        micro = config.batch_size // config.grad_accum
        if micro % n_proc:
            raise VlatrimError(f"micro-batch {micro} (batch_size / grad_accum) is not divisible by "
                               f"the {n_proc} processes")
        self.micro_batch = micro

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / CHECKPOINTS_DIR

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints of this run, oldest first."""
        if not self.checkpoint_root.is_dir():
            return []
        found = [p for p in self.checkpoint_root.glob("step-*") if (p / STATE_JSON).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def _save_checkpoint(self, model, optimizer, scheduler, step: int) -> Path:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = self.checkpoint_root / f"step-{step:07d}"
        if acc.is_main_process:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "torch_rng": torch.get_rng_state()}
            if torch.cuda.is_available():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            with atomic_dir(path, overwrite=True) as tmp:
                self.save_model(acc.unwrap_model(model), tmp)
                torch.save(state, tmp / STATE_PT)
                (tmp / STATE_JSON).write_text(json.dumps(
                    {"step": step, "samples": step * self.config.batch_size, "config": self.config.to_dict()},
                    indent=2) + "\n")
            for old in self.checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def _load_state(self, path: Path) -> dict[str, Any]:
        meta = read_json(path / STATE_JSON, what="trainer state")
        try:
            state = torch.load(path / STATE_PT, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise VlatrimError(f"checkpoint {str(path)!r} has no {STATE_PT}") from None
        except Exception as e:  # a truncated / foreign file: name it, do not show a pickle traceback
            raise VlatrimError(f"trainer state {str(path / STATE_PT)!r} cannot be read ({type(e).__name__})") from None
        state["step"] = int(meta["step"])
        saved = meta.get("config", {})
        for key in RESULT_SETTINGS:
            if key in saved and saved[key] != getattr(self.config, key):
                raise VlatrimError(f"cannot resume from {str(path)!r}: it was trained with {key}={saved[key]!r}, "
                                   f"this run has {key}={getattr(self.config, key)!r}")
        return state

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (or stop early after global step ``stop_after``).

        Args:
            resume: continue from the newest checkpoint in ``run_dir/checkpoints`` (error if none).
            stop_after: stop once this global step is done (checkpointing it); used to pause a run.

        Returns:
            A ``TrainResult``.

        Raises:
            VlatrimError: no checkpoint to resume from, or a non-finite loss (the run stops; the last
                good checkpoint stays).
        """
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        cfg, acc = self.config, self.accelerator
        start, state = 0, None
        if resume:
            ckpts = self.checkpoints()
            if not ckpts:
                raise VlatrimError(f"nothing to resume: {str(self.checkpoint_root)!r} holds no complete checkpoint")
            state = self._load_state(ckpts[-1])
            start = state["step"]
            self.load_model(self.model, ckpts[-1])
        else:
            torch.manual_seed(cfg.seed)
        model = self.model.to(acc.device)
        model.train()
        optimizer = make_adamw(self.param_groups(model), cfg)
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps, min_lr_rate=cfg.min_lr_ratio)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        if start >= end:
            return TrainResult(step=start, finished=start >= cfg.steps, resumed_from=start)
        sampler = ResumableBatchSampler(len(self.train_data), self.micro_batch, cfg.seed,
                                        start=start * cfg.grad_accum, num_batches=(end - start) * cfg.grad_accum)
        # The loader's own generator keeps it from drawing its worker seed from torch's global RNG,
        # which would shift the dropout stream of a resumed run against an uninterrupted one.
        loader = DataLoader(self.train_data, batch_sampler=sampler, collate_fn=collate_batch,
                            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
        model, optimizer, loader = acc.prepare(model, optimizer, loader)
        log_path = self.run_dir / LOG_FILE
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _truncate_log(log_path, start)
        return self._loop(model, optimizer, scheduler, loader, start, end, log_path)

    def _loop(self, model, optimizer, scheduler, loader, start: int, end: int, log_path: Path) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        step, micro = start, 0
        window: dict[str, float] = {}
        window_n, grad_norm = 0, float("nan")
        last_log: dict[str, Any] = {}
        t0, ckpt_time = time.perf_counter(), 0.0
        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not acc.is_main_process,
                   dynamic_ncols=True)
        try:
            for batch in loader:
                with acc.accumulate(model):
                    with acc.autocast():
                        losses = self.loss_fn(model, batch)
                    loss = losses["loss"]
                    if not torch.isfinite(loss.detach()):
                        raise VlatrimError(f"non-finite loss ({loss.item()}) at step {step + 1}; stopped, the last "
                                           f"good checkpoint is kept in {str(self.checkpoint_root)!r}")
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.grad_clip > 0:
                        grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in losses.items():
                    if torch.is_tensor(v) and v.dim() == 0:
                        window[k] = window.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
                micro += 1
                if micro % cfg.grad_accum:
                    continue
                scheduler.step()
                step += 1
                window_n += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == end:
                    keys = sorted(window)
                    # Each process saw its share of the global batch: log the mean over processes.
                    means = acc.reduce(torch.tensor([window[k] / window_n for k in keys], device=acc.device),
                                       reduction="mean").tolist()
                    last_log = {"step": step, **dict(zip(keys, means)),
                                "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                                "samples": step * cfg.batch_size,
                                "elapsed_s": round(time.perf_counter() - t0, 3)}
                    bar.set_postfix(loss=f"{last_log['loss']:.4f}")
                    if acc.is_main_process:
                        with open(log_path, "a") as f:
                            f.write(json.dumps(last_log) + "\n")
                    window, window_n = {}, 0
                if step % cfg.checkpoint_every == 0 or step == end:
                    tc = time.perf_counter()
                    self._save_checkpoint(model, optimizer, scheduler, step)
                    ckpt_time += time.perf_counter() - tc
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0 - ckpt_time
        self.model = acc.unwrap_model(model)
        return TrainResult(step=step, finished=step >= cfg.steps, last_log=last_log,
                           steps_per_s=(step - start) / elapsed if elapsed > 0 else math.nan, resumed_from=start)


def make_adamw(groups: list[dict[str, Any]], config: TrainerConfig) -> torch.optim.AdamW:
    """AdamW over ``groups``, with the fused kernel where every parameter is a plain CPU/CUDA tensor.

    The fused kernel updates all parameters in one pass instead of a dozen elementwise ops per
    tensor (the update was ~20% of a quick-preset CPU step). It does the same arithmetic; sharded
    (DTensor) parameters keep the default implementation.
    """
    params = [p for g in groups for p in g["params"]]
    fused = all(type(p) is nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused or None)


def make_accelerator(config: TrainerConfig):
    """An ``accelerate.Accelerator`` for ``config``: device, autocast precision, gradient accumulation.

    Global batches are split across processes (``split_batches``), so ``batch_size`` means the same
    thing on one process or many.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise VlatrimError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    use_cuda = cuda and config.device != "cpu"
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if use_cuda else "no"
    if precision == "bf16" and not use_cuda and not cpu_has_native_bf16():
        warnings.warn("bf16 autocast on a CPU without native bf16 instructions (AVX512-BF16/AMX) is slower "
                      "than fp32; pass --mixed-precision no", stacklevel=2)
    # Accelerate keeps one precision per process and refuses a second Accelerator with another, but
    # a study trains (bf16 on a bf16 CPU) and then recovers (fp32) in one process: forget the old
    # precision (the process group, held by PartialState, stays).
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not use_cuda, mixed_precision=precision,
                       gradient_accumulation_steps=config.grad_accum,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def _truncate_log(path: Path, step: int) -> None:
    # A run killed after its last checkpoint logged steps that the resumed run will log again.
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    path.write_text("".join(k + "\n" for k in keep))
