"""Settings of recovery fine-tuning: one dataclass per method family, every field documented and
validated on construction (errors quote the bad value and say what is valid)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from vlatrim.errors import VlatrimError

ACTION_DISTANCES = ("l1", "mse")


def _positive(name: str, v: Any, integer: bool = False) -> None:
    bad = (not isinstance(v, int) or isinstance(v, bool)) if integer else not isinstance(v, (int, float))
    if bad or not v > 0 or (not integer and not math.isfinite(v)):
        raise VlatrimError(f"{name}={v!r} must be a positive {'integer' if integer else 'number'}")


@dataclass
class LoraSettings:
    """Low-rank adapters (peft LoRA) on the linear layers of the language backbone."""

    rank: int = 16
    """Rank r of each adapter (the update is B @ A with A: r x in, B: out x r)."""
    alpha: float = 32.0
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training (0 keeps runs bit-reproducible across processes)."""
    targets: tuple[str, ...] = ("all-linear",)
    """Linear modules to adapt: ``all-linear`` (every nn.Linear under ``scope``) or module names matched
    as a suffix of the dotted path (``q_proj``, ``self_attn.v_proj``, ``attention.self.query``)."""
    scope: str | None = None
    """Dotted module path under which targets are searched (empty: the whole model). None: the model's
    policy family decides (the reference VLA: ``backbone``, its language backbone)."""
    train_also: tuple[str, ...] | None = None
    """Parameters trained in full next to the adapters, by name prefix; empty: adapters only. None: the
    family decides (the reference VLA: ``head`` and ``action_queries``, small and right after the cut, as
    in OpenVLA-OFT's LoRA recipe)."""

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        self.train_also = tuple(self.train_also) if self.train_also is not None else None
        _positive("LoRA rank", self.rank, integer=True)
        _positive("LoRA alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise VlatrimError(f"LoRA dropout={self.dropout!r} must be in [0, 1)")
        if not self.targets or any(not t for t in self.targets):
            raise VlatrimError(f"LoRA targets {list(self.targets)!r} must be non-empty names or 'all-linear'")
        if "all-linear" in self.targets and len(self.targets) > 1:
            raise VlatrimError(f"LoRA targets {list(self.targets)!r}: 'all-linear' already takes every linear layer; "
                               "give it alone")


@dataclass
class DistillSettings:
    """Distillation from the unpruned teacher, weighted with the task (behaviour-cloning) loss."""

    task_weight: float = 1.0
    """Weight of the task loss (the student's own action loss against the demonstrations)."""
    action_weight: float = 1.0
    """Weight of action-output distillation: distance between the student's and the teacher's predicted
    chunks in normalized action units (continuous head), or KL(teacher || student) over the action
    bins (discrete head)."""
    action_distance: str = "l1"
    """``l1`` or ``mse`` between continuous action predictions."""
    hidden_weight: float = 0.0
    """Weight of hidden-state alignment: each kept student block's output against the output of the
    teacher block it came from (prune.json ``kept_blocks``), relative MSE; 0 turns it off."""
    temperature: float = 1.0
    """Softmax temperature of the KL term for a discrete action head."""

    def __post_init__(self) -> None:
        for name in ("task_weight", "action_weight", "hidden_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise VlatrimError(f"distillation {name}={v!r} must be a finite number >= 0")
        if self.task_weight + self.action_weight + self.hidden_weight == 0:
            raise VlatrimError("distillation weights are all 0; set --distill-action-weight (or another) > 0")
        if self.action_distance not in ACTION_DISTANCES:
            raise VlatrimError(f"distillation action_distance {self.action_distance!r} is not valid; valid: "
                               f"{', '.join(ACTION_DISTANCES)}")
        _positive("distillation temperature", self.temperature)


@dataclass
class RecoverySettings:
    """What a recovery run does besides the optimizer settings (``TrainerConfig``)."""

    method: str = "full"
    """Registered recovery method: ``full``, ``lora`` or ``distill``."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Used by ``lora``."""
    distill: DistillSettings = field(default_factory=DistillSettings)
    """Used by ``distill``."""
    val_fraction: float = 0.1
    """Share of each task's episodes held out (the last ones) for the offline action error."""
    gradient_checkpointing: bool = False
    """Recompute the backbone's activations in the backward pass (memory for time; large backbones)."""
    train_also: tuple[str, ...] = ()
    """``full`` and ``distill``: parameters trained besides the family's full set, by name prefix (e.g. a
    SmolVLA's vision encoder after a vision cut, which LeRobot's ``freeze_vision_encoder`` freezes)."""

    def __post_init__(self) -> None:
        self.train_also = tuple(self.train_also)
        if any(not t for t in self.train_also):
            raise VlatrimError(f"train_also {list(self.train_also)!r} must be non-empty parameter-name prefixes")
        if self.train_also and self.method == "lora":
            raise VlatrimError("--train-also applies to --method full and distill; LoRA trains prefixes in full "
                               "with --lora-train-also")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if isinstance(self.distill, dict):
            self.distill = DistillSettings(**self.distill)
        if not 0.0 <= self.val_fraction < 1.0:
            raise VlatrimError(f"val_fraction={self.val_fraction!r} must be in [0, 1)")

    def method_dict(self) -> dict[str, Any]:
        """The settings that matter for ``method`` (what run_config.json and recover.json record)."""
        out: dict[str, Any] = {"method": self.method, "val_fraction": self.val_fraction,
                               "gradient_checkpointing": self.gradient_checkpointing}
        if self.train_also:  # recorded only when set, so runs written before the field existed still resume
            out["train_also"] = list(self.train_also)
        if self.method == "lora":
            out["lora"] = _jsonable(dataclasses.asdict(self.lora))
        if self.method == "distill":
            out["distill"] = dataclasses.asdict(self.distill)
        return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
