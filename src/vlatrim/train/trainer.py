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
  (default: ``model.save_pretrained`` and a strict safetensors load of ``model.safetensors``). Both
  always see a plain, unsharded module.

Device placement, autocast, gradient accumulation and distribution come from
``accelerate.Accelerator``: the same code runs on CPU, one GPU, or several processes started by
``torchrun`` / ``accelerate launch``:
- DDP (``accelerate launch --multi_gpu``, or ``torchrun``): every process holds the whole model; the
  main process writes the checkpoints.
- FSDP2 (an accelerate config with ``distributed_type: FSDP`` and ``fsdp_version: 2``): parameters,
  gradients and optimizer state are sharded (``fully_shard``; the optimizer is built over the plain
  parameters and Accelerate swaps in the DTensor shards). A checkpoint gathers the full weights and
  the full optimizer state to the main process (``torch.distributed.checkpoint.state_dict``,
  ``full_state_dict=True, cpu_offload=True``: one tensor at a time, into CPU memory), loads the
  weights into a parameter-less copy of the model made before sharding, and writes that copy
  through ``save_model``, so checkpoints and the final model are the same files as without FSDP.
  Resuming loads the weights into the plain model before sharding and broadcasts the optimizer
  state from the main process (``set_optimizer_state_dict``, ``broadcast_from_rank0``). FSDP1 is
  refused. Accelerate 1.15 turns FSDP on only for accelerator devices and would silently run DDP
  on CPU processes; ``make_accelerator`` turns it on for CPU processes too (torch's FSDP2 runs over
  gloo), which is how it is tested here.

A checkpoint ``<run>/checkpoints/step-NNNNNNN/`` holds the model files plus ``trainer_state.pt``
(optimizer, scheduler, torch RNG; read back with ``torch.load(weights_only=True)``) and
``trainer_state.json`` (step, samples seen). The optimizer state is keyed by parameter position
(``optimizer.state_dict()``, ``optimizer_keys: "index"``) without FSDP and by parameter name
(``optimizer_keys: "name"``) under FSDP; either kind resumes in either setting. The data order is a
pure function of (seed, step) (``ResumableBatchSampler``), so resuming continues exactly where the
checkpoint was taken.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vlatrim.errors import VlatrimError
from vlatrim.models.checkpoint import load_weights, write_checkpoint
from vlatrim.train.config import TrainerConfig
from vlatrim.train.data import ResumableBatchSampler, collate_batch
from vlatrim.utils.device import resolve_device
from vlatrim.utils.hardware import cpu_has_native_bf16
from vlatrim.utils.io import atomic_dir, ensure_empty_dir, read_json, write_json_atomic

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
        self.fsdp = is_fsdp(self.accelerator)
        if self.fsdp and not self.accelerator.is_fsdp2:
            raise VlatrimError("FSDP version 1 is not supported by the vlatrim trainer; set fsdp_version: 2 in the "
                               "accelerate config (or pass --fsdp_version 2 to accelerate launch)")
        n_samples = len(train_data)  # library callers get the CLI's check too, before any file is written
        if config.batch_size > n_samples:
            raise VlatrimError(f"batch size {config.batch_size} exceeds the {n_samples} training samples; lower "
                               "--batch-size")
        if self.fsdp:
            # `accelerate launch` turns cpu_ram_efficient_loading on by default. It is for transformers'
            # from_pretrained loading the weights on rank 0 only; here every process already holds the
            # whole model when the Trainer gets it, and Accelerate's re-broadcast of rank 0's weights
            # needs a transformers PreTrainedModel (``get_parameter_or_buffer``): it fails on a VLA.
            self.accelerator.state.fsdp_plugin.cpu_ram_efficient_loading = False
        self._template: nn.Module | None = None  # FSDP: parameter-less copy of the model, main process only
        self._final: tuple[int, nn.Module | None] | None = None  # FSDP: (step, plain model) of the last step

    def create_run_dir(self, settings_file: str, settings: dict[str, Any]) -> None:
        """Start a fresh run directory: ``run_dir`` emptied and ``settings`` written to ``settings_file``.

        Collective: every process calls it once it has checked its inputs and built its model (so a
        failure there leaves no run directory behind); only the main process writes, between barriers.
        """
        def write() -> None:
            ensure_empty_dir(self.run_dir)
            write_json_atomic(self.run_dir / settings_file, settings)

        self.accelerator.wait_for_everyone()
        self._on_main_process(write)
        self.accelerator.wait_for_everyone()

    def _on_main_process(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the main process only; if it fails, every process fails with its message.

        Without this, an error only the main process sees (``--out`` is a file, the disk is full)
        reaches the other processes as a collective torn down under them (gloo: "Connection closed
        by peer"), or as a wait until the collective's timeout where nothing tears it down.
        """
        acc = self.accelerator
        if acc.num_processes == 1:
            work()
            return
        from accelerate.utils import broadcast_object_list

        failure: list[Any] = [None]
        if acc.is_main_process:
            try:
                work()
            except Exception as exc:  # shared below, then raised on every process
                failure = [str(exc) if isinstance(exc, VlatrimError) else f"{type(exc).__name__}: {exc}"]
                broadcast_object_list(failure)
                raise
        broadcast_object_list(failure)
        if failure[0] is not None:
            raise VlatrimError(f"the main process failed: {failure[0]}")

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / CHECKPOINTS_DIR

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints of this run, oldest first."""
        return complete_checkpoints(self.run_dir)

    def _save_checkpoint(self, model, optimizer, scheduler, step: int, final: bool = False) -> Path:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = self.checkpoint_root / f"step-{step:07d}"
        if self.fsdp:
            # Collectives: every process sends its shards, the main process receives whole tensors.
            plain, optim_state = self._gather_plain(model), full_optimizer_state(model, optimizer)
            keys = "name"
        else:
            plain, optim_state, keys = acc.unwrap_model(model), None, "index"

        def write() -> None:
            state = {"optimizer": optimizer.state_dict() if optim_state is None else optim_state,
                     "optimizer_keys": keys, "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()}
            if torch.cuda.is_available():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            with atomic_dir(path, overwrite=True) as tmp:
                self.save_model(plain, tmp)
                torch.save(state, tmp / STATE_PT)
                (tmp / STATE_JSON).write_text(json.dumps(
                    {"step": step, "samples": step * self.config.batch_size, "config": self.config.to_dict()},
                    indent=2) + "\n")
            for old in self.checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)

        self._on_main_process(write)  # a full disk on the main process stops every process
        if self.fsdp and final:  # on every process: the loop's end then skips a second gather (a collective)
            self._final = (step, plain)
        acc.wait_for_everyone()
        return path

    def _gather_plain(self, model: nn.Module) -> nn.Module | None:
        """FSDP: the full weights in a plain copy of the model on the main process (None elsewhere)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.accelerator.is_main_process:
            return None
        # A parameter whose rows do not split evenly over the processes comes back as a view into the
        # padded all-gather buffer; safetensors refuses to save a tensor that does not cover its storage.
        weights = {k: v if v.untyped_storage().nbytes() == v.nbytes else v.clone() for k, v in weights.items()}
        plain = copy.deepcopy(self._template)
        plain.load_state_dict(weights, strict=True, assign=True)  # meta parameters take the gathered tensors
        return plain

    def _load_state(self, path: Path) -> dict[str, Any]:
        meta = read_json(path / STATE_JSON, what="trainer state")
        try:
            # Under FSDP only the main process reads the optimizer state (it broadcasts it): mmap keeps the
            # others from paging in a file that holds the whole model's moments.
            state = torch.load(path / STATE_PT, map_location="cpu", weights_only=True, mmap=self.fsdp)
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
            A ``TrainResult``. ``self.model`` is then the trained plain module; under FSDP it is rebuilt
            from the gathered weights on the main process, and the other processes keep their shards.

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
        # Under FSDP the whole model stays where it is: fully_shard moves each process's shards to the device.
        model = self.model if self.fsdp else self.model.to(acc.device)
        model.train()
        if self.fsdp and acc.is_main_process:
            self._template = meta_copy(model)  # made before sharding replaces the parameters
        # Built over the plain parameters; under FSDP2 Accelerate's prepare swaps in the DTensor shards
        # (it maps them by name), which the fused AdamW kernel supports (DTensor has a sharding rule for it).
        optimizer = make_adamw(self.param_groups(model), cfg)
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps, min_lr_rate=cfg.min_lr_ratio)
        optim_state = None
        if state is not None:
            optim_state = state.get("optimizer") if acc.is_main_process or not self.fsdp else None
            if not self.fsdp:
                if state.get("optimizer_keys") == "name":  # written by an FSDP run
                    optim_state = optimizer_state_by_index(optim_state, optimizer, model)
                with _kernel_flags_kept(optimizer):
                    optimizer.load_state_dict(optim_state)
            elif acc.is_main_process and state.get("optimizer_keys", "index") == "index":
                optim_state = optimizer_state_by_name(optim_state, optimizer, model)
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
        if state is not None and self.fsdp:
            with _kernel_flags_kept(optimizer):
                load_full_optimizer_state(model, optimizer, optim_state if acc.is_main_process else {})
        log_path = self.run_dir / LOG_FILE
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _truncate_log(log_path, start)
        return self._loop(model, optimizer, scheduler, loader, start, end, log_path)

    def _with_loss_denominator(self, batches):
        """Yield the micro-batches, each optimizer step's ``grad_accum`` of them fetched together and given
        ``loss_denominator``: the global batch's count of chunk steps inside their episodes (summed over the
        micro-batches and over processes) divided by the number of shares (processes x micro-batches).

        The action loss of each share divides its sum by that, so averaging the shares' gradients (DDP,
        FSDP, accumulation) gives the gradient of the mean over the whole global batch: a 2-process or
        accumulated run follows the 1-process full-batch run up to float rounding. A batch without an
        ``action_mask`` is passed through untouched.
        """
        acc, n = self.accelerator, self.config.grad_accum
        while group := list(itertools.islice(batches, n)):
            if all(isinstance(b, dict) and "action_mask" in b for b in group):
                steps = torch.stack([b["action_mask"].sum() for b in group]).sum().float().reshape(1)
                if acc.num_processes > 1:
                    steps = acc.reduce(steps, reduction="sum")
                denominator = steps[0] / (acc.num_processes * len(group))
                for b in group:
                    b["loss_denominator"] = denominator
            yield from group

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
            for batch in self._with_loss_denominator(iter(loader)):
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
                    self._save_checkpoint(model, optimizer, scheduler, step, final=step == end)
                    ckpt_time += time.perf_counter() - tc
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0 - ckpt_time
        if not self.fsdp:
            # Without the autocast wrapper Accelerate puts on forward: the trained model computes in fp32.
            self.model = acc.unwrap_model(model, keep_fp32_wrapper=False)
        else:  # the sharded module needs every process for a forward pass: hand back a plain one
            plain = self._final[1] if self._final and self._final[0] == step else self._gather_plain(model)
            self.model = plain if acc.is_main_process else acc.unwrap_model(model)
            self._final = None
        return TrainResult(step=step, finished=step >= cfg.steps, last_log=last_log,
                           steps_per_s=(step - start) / elapsed if elapsed > 0 else math.nan, resumed_from=start)


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints (``checkpoints/step-N`` holding its state file) in ``run_dir``, oldest
    first: what ``Trainer.fit(resume=True)`` can resume from (nothing when empty)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_JSON).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def is_fsdp(accelerator: Any) -> bool:
    """Whether ``accelerator`` shards the model (FSDP, any version)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are on the meta device (no memory); buffers are copied.

    ``load_state_dict(weights, assign=True)`` on (a copy of) it gives a plain model with those weights;
    ``requires_grad`` is kept, so hooks that select trainable parameters see the same ones.
    """
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def _kernel_flags_kept(optimizer: Any):
    """Loading an optimizer state copies the saved param-group flags; keep this run's kernel choice
    (fused / foreach: how the update is computed, not what it computes)."""
    opt = _torch_optimizer(optimizer)
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in opt.param_groups]
    yield
    for g, f in zip(opt.param_groups, flags):
        g.update(f)


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it


def full_optimizer_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """FSDP: the whole optimizer state keyed by parameter name, on the main process ({} elsewhere).

    A collective: every process must call it. Tensors are gathered one at a time into CPU memory.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, _torch_optimizer(optimizer),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """FSDP: load a name-keyed full optimizer state given on the main process ({} elsewhere) into the
    sharded optimizer; the main process broadcasts each tensor and every process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, _torch_optimizer(optimizer), state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _param_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    # optimizer.state_dict() numbers the parameters 0, 1, ... across its groups in this order.
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_state_by_name(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                            model: nn.Module) -> dict[str, Any]:
    """``optimizer.state_dict()`` (keyed by position) re-keyed by parameter name, the layout of
    ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``; ``optimizer`` is a fresh one
    over ``model``'s parameters built with the same groups."""
    order = _param_names(optimizer, model)
    return {"state": {order[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}


def optimizer_state_by_index(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                             model: nn.Module) -> dict[str, Any]:
    """The inverse of ``optimizer_state_by_name``: a name-keyed state for ``optimizer.load_state_dict``."""
    index = {n: i for i, n in enumerate(_param_names(optimizer, model))}
    missing = sorted(set(state["state"]) - set(index))
    if missing:
        raise VlatrimError(f"the checkpoint's optimizer state names parameters this model does not train "
                           f"({len(missing)}, e.g. {missing[:2]})")
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def make_adamw(groups: list[dict[str, Any]], config: TrainerConfig) -> torch.optim.AdamW:
    """AdamW over ``groups``, with the fused kernel where every parameter is a plain CPU/CUDA tensor.

    The fused kernel updates all parameters in one pass instead of a dozen elementwise ops per
    tensor (the update was ~20% of a quick-preset CPU step). It does the same arithmetic. Under FSDP2
    the optimizer is built here over the plain parameters and Accelerate swaps in the DTensor shards
    afterwards; the fused kernel runs on them (DTensor has a sharding rule for ``_fused_adamw_``).
    Parameters that are already DTensors when it is built keep the default implementation.
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
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

    use_cuda = resolve_device(config.device).type == "cuda"
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
    acc = Accelerator(cpu=not use_cuda, mixed_precision=precision,
                      # The loop fetches each step's micro-batches together (``_with_loss_denominator``):
                      # the loader's end would be seen a micro-batch early, so sync by count alone.
                      gradient_accumulation_plugin=GradientAccumulationPlugin(
                          num_steps=config.grad_accum, sync_with_dataloader=False),
                      dataloader_config=DataLoaderConfiguration(split_batches=True))
    _fsdp_on_cpu(acc, precision)
    return acc


def _fsdp_on_cpu(acc: Any, precision: str) -> None:
    """Honour ``accelerate launch``'s FSDP request on CPU processes.

    Accelerate 1.15 reads ``ACCELERATE_USE_FSDP`` but switches to FSDP only for accelerator devices
    (``AcceleratorState.__init__``); CPU processes would silently train with DDP. torch's FSDP2
    (``fully_shard``) runs on CPU over gloo, so this sets the state the way Accelerate sets it on GPUs:
    a ``FullyShardedDataParallelPlugin`` read from the launcher's ``FSDP_*`` variables, and
    ``distributed_type = FSDP`` (only on the accelerator state: a later reset re-derives it).
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (acc.distributed_type != DistributedType.MULTI_CPU
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true"):
        return
    plugin = FullyShardedDataParallelPlugin()
    if precision != "no":
        plugin.set_mixed_precision(precision)
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP


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
