"""What a recovery method is, and how its checkpoints store the weights it trains.

A method is a class registered by name in ``RECOVERY_METHODS``. The one training loop
(``vlatrim.train.trainer.Trainer``) runs every method; a method only supplies the pieces it plugs in:
``prepare`` (wrap or freeze the student before training), ``loss`` (the loop's ``loss_fn``) and
``finalize`` (turn the trained module back into a plain model for saving). Adding a method is one
module that subclasses ``RecoveryMethod`` and registers itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.registry import Registry
from vlatrim.train.recovery.config import RecoverySettings

TRAINABLE_FILE = "trainable.safetensors"


class RecoveryMethod:
    """Base class of recovery methods.

    Subclasses set ``name`` (the registry key, also the ``--method`` value) and may set
    ``needs_teacher``; ``__init_subclass__`` refuses a subclass without a name.

    Args:
        settings: the run's recovery settings.
        family: the model's policy family (``vlatrim.families``), whose ``loss`` is the task loss.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = False
    default_lr: ClassVar[float] = 1e-4

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.__dict__.get("name"), str) or not cls.__dict__["name"]:
            raise TypeError(f"recovery method {cls.__name__} must set a class attribute 'name'")

    def __init__(self, settings: RecoverySettings, family: Any = None) -> None:
        self.settings = settings
        self.family = family

    def attach_teacher(self, teacher: nn.Module, student: nn.Module, kept_blocks: list[int] | None) -> None:
        """Take the teacher (only methods with ``needs_teacher``); checks compatibility before training."""
        raise VlatrimError(f"--teacher is only used by methods that distil; method {self.name!r} takes none")

    def prepare(self, student: nn.Module) -> nn.Module:
        """The module the loop trains (default: the student itself, every parameter trainable)."""
        return student

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """The loop's objective: ``{"loss": scalar, ...}`` (default: the family's task loss)."""
        return self.family.loss(model, batch) if self.family is not None else model(batch)

    def finalize(self, model: nn.Module) -> nn.Module:
        """The plain model to save after training (default: as trained)."""
        return model


RECOVERY_METHODS: Registry[type[RecoveryMethod]] = Registry("recovery method")


def names_under(names: list[str], prefix: str) -> list[str]:
    """The parameter names under the dotted ``prefix`` (the name itself, or ``prefix.``...), in order."""
    prefix = prefix.rstrip(".")
    return [n for n in names if n == prefix or n.startswith(prefix + ".")]


def top_level(names: list[str]) -> list[str]:
    """The first components of ``names``, sorted (what a refused prefix could have started with)."""
    return sorted({n.split(".", 1)[0] for n in names})


def save_trainable(model: nn.Module, path: Path) -> None:
    """Checkpoint hook: write the parameters that train (and only those) to ``trainable.safetensors``.

    The frozen rest is the source checkpoint, whose hash the run records, so a resumed run rebuilds it
    from there; for LoRA on a large backbone this keeps periodic checkpoints small.
    """
    from safetensors.torch import save_file

    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / TRAINABLE_FILE))


def load_trainable(model: nn.Module, path: Path) -> None:
    """Checkpoint hook: restore what ``save_trainable`` wrote; every trainable parameter must be there."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / TRAINABLE_FILE
    try:
        state = load_file(str(file))
    except (FileNotFoundError, SafetensorError) as e:
        raise VlatrimError(f"checkpoint {str(file)!r} cannot be read ({type(e).__name__}); it is not a "
                           "vlatrim recover checkpoint or it is damaged") from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(params):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise VlatrimError(f"checkpoint {str(file)!r} does not fit this run's trainable parameters "
                           f"({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})")
    with torch.no_grad():
        for n, p in params.items():
            if state[n].shape != p.shape:
                raise VlatrimError(f"checkpoint {str(file)!r}: {n} has shape {tuple(state[n].shape)}, the model "
                                   f"{tuple(p.shape)}")
            p.copy_(state[n].to(p.device, p.dtype))
