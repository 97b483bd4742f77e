"""What a policy family is: everything the verbs need to know about one kind of VLA.

A family is one class, registered by name in ``FAMILIES``, that answers for one kind of checkpoint
(the reference VLA, a transformers text model, a LeRobot policy, your own model):

- ``recognizes(path, config)``: is this checkpoint directory mine? (``config`` is its config.json)
- ``load(path, device)`` / ``save(model, out)``: a checkpoint its own ecosystem reloads;
- ``loss(model, batch)`` and ``loss_info(model)``: the training loss that analysis scores against and
  recovery minimises, and its likelihood (for GateProbe's curvature);
- ``dataset(model, data, split)``: samples from a LeRobot v3 dataset whose features match the model;
- ``policy(model, device)``: a closed-loop policy (``vlatrim.sim.policy`` contract) with its
  ``PolicyIO`` declaration, so a simulator backend can refuse a mismatch before any episode;
- ``position_mask(model, batch)``: which positions of the backbone's sequence are real (not padding);
- ``pathways(model)``: vision / language / action block lists; ``couplings(model)``: the cuts one
  block list forces on another; ``check_cut`` / ``after_cut``: refuse what the architecture cannot
  express, and keep the family's own config fields true after a cut;
- ``recovery_methods``, ``trainable(model, method)`` and ``lora_defaults(model)``: which recovery
  methods apply, what full fine-tuning trains, and what LoRA adapts and trains by default;
  ``check_teacher`` and ``distill_outputs``: what distillation compares (families offering ``distill``).

Verbs never test for a concrete model class: they call ``family_of(path)`` and ask the family. Families
register when their module is imported; ``vlatrim.families`` imports the built-in ones and any module
named by an installed package under the ``vlatrim.plugins`` entry-point group (``vlatrim.utils.plugins``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from vlatrim.errors import VlatrimError
from vlatrim.models.adapters import BackboneHandle, BlockList, locate_backbone
from vlatrim.prune.plan import Coupling, PrunePlan
from vlatrim.quantize.schemes import QUANT_KEY
from vlatrim.registry import Registry
from vlatrim.utils.plugins import load_plugins

Split = Literal["train", "held_out", "all"]
LIKELIHOODS = ("nll", "l1", "mse")


@dataclass(frozen=True)
class LossInfo:
    """How to read a family's loss (GateProbe's curvature depends on the likelihood behind it)."""

    likelihood: str  # "nll" (cross-entropy), "l1" or "mse"
    terms_per_sample: int  # independent terms averaged within one sample (T x A for an action chunk)
    name: str  # what the loss is, for reports (e.g. "action l1", "flow-matching mse")

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood {self.likelihood!r} is not one of {', '.join(LIKELIHOODS)}")


class NoSamples(Dataset):
    """The samples of an empty split (e.g. no held-out episodes)."""

    def __len__(self) -> int:
        return 0

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        raise IndexError("this split holds no samples")


@dataclass
class SampleSet:
    """Samples of one split of a dataset, as a family batches them.

    ``data`` supports ``len()`` and ``__getitems__(indices) -> batch dict`` (the batch the family's
    ``loss`` takes); ``instructions`` are the dataset's task texts; ``description`` goes into reports.
    """

    data: Dataset
    instructions: list[str]
    description: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific (e.g. the decoded frames)


class PolicyFamily:
    """Base class of policy families; subclasses set ``name`` and override what applies to them.

    A subclass without a ``name`` is refused when it is defined. Methods that a family cannot offer
    raise ``VlatrimError`` saying so (e.g. a text model has no closed-loop policy).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    recovery_methods: ClassVar[tuple[str, ...]] = ()  # --method values recovery accepts for this family
    trains_policies: ClassVar[bool] = True  # False for families whose loss is not an action loss

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.__dict__.get("name"), str) or not cls.__dict__["name"]:
            raise TypeError(f"policy family {cls.__name__} must set a class attribute 'name'")

    # ------------------------------------------------------------------ checkpoints
    def refusal(self) -> str | None:
        """Why this checkpoint cannot be analysed, pruned or recovered (e.g. it is quantized); None: it can."""
        return None

    def recognizes(self, path: Path, config: dict[str, Any]) -> bool:
        """Whether the checkpoint directory ``path`` (whose config.json is ``config``) is this family's."""
        raise NotImplementedError

    def owns(self, model: nn.Module) -> bool:
        """Whether an in-memory ``model`` is one of this family's (for library calls given a model, not a path)."""
        return False

    def load(self, path: Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> nn.Module:
        """The model in eval mode on ``device``, pruned or not (no download; no remote code unless asked)."""
        raise NotImplementedError

    def save(self, model: nn.Module, out: Path, destination: Path | None = None) -> None:
        """Write ``model`` into the existing directory ``out`` so that ``load`` (and the family's own
        ecosystem) reloads it exactly. ``destination``: where ``out`` ends up when it is a staging
        directory renamed into place afterwards (atomic writes); a family whose files must name their own
        directory by absolute path writes that one. None: ``out`` is the final place."""
        raise NotImplementedError

    # ------------------------------------------------------------------ loss and data
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """``{"loss": scalar, ...}`` on a batch from ``dataset``. The default calls ``model(batch)``, the
        convention that lets the training loop wrap the model for DDP / FSDP."""
        return model(batch)

    def loss_info(self, model: nn.Module) -> LossInfo:
        raise NotImplementedError

    def dataset(self, model: nn.Module, data: Path, split: Split = "train", val_fraction: float = 0.1) -> SampleSet:
        """Samples of ``split`` of the LeRobot v3 dataset ``data``; a dataset whose features do not match
        the model raises ``VlatrimError`` naming both."""
        raise NotImplementedError

    def position_mask(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor | None:
        """Which positions of the language backbone's input sequence are real (not padding), for a batch of
        ``dataset``: a (B, S) mask over the S positions the backbone's blocks see, or None when all are
        real. Scorers that average over positions (block influence, angular distance) count only these.
        Default: the batch's ``attention_mask`` (right for a text model whose sequence is the tokens)."""
        return batch.get("attention_mask") if isinstance(batch, dict) else None

    def sequence_length(self, model: nn.Module, batch: dict[str, Any]) -> int | None:
        """Tokens the backbone processes per sample (for the token budget in recover.json); None: unknown."""
        return None

    # ------------------------------------------------------------------ acting
    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Action chunks (B, T, A) in environment units, on the CPU, from a batch of ``dataset``
        (offline action error on held-out episodes)."""
        raise VlatrimError(f"a {self.name} model predicts no actions")

    def example_batch(self, model: nn.Module, batch_size: int, generator: torch.Generator,
                      instruction: str) -> dict[str, Any] | None:
        """Synthetic observations (random image and state, ``instruction`` tokenized) for benchmarks, on
        the model's device; None for a model that takes only text (bench then feeds random tokens)."""
        return None

    def act(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The deployed computation: an observation batch to an action chunk (B, T, A) on the model's
        device (what ``vlatrim bench`` times as the full forward). Default: ``predict_batch``."""
        return self.predict_batch(model, batch)

    def backbone_module(self, model: nn.Module, handle: BackboneHandle) -> nn.Module:
        """The module whose first call while ``act`` runs is the language backbone's pass over the
        observation: ``vlatrim bench`` records that call and replays it to time the backbone alone.
        Default: the backbone itself (``handle.owner``), as a VLA that calls it with ``inputs_embeds``."""
        return handle.owner

    def sequence_info(self, model: nn.Module) -> dict[str, Any]:
        """What the backbone's input sequence is made of, for bench.json (e.g. image / text tokens,
        ``chunk_size``: actions per forward, for the control rate)."""
        return {}

    def policy(self, model: nn.Module, device: str | torch.device = "cpu") -> Any:
        """A ``vlatrim.sim.policy.Policy`` (with an ``io`` declaration) that runs ``model`` in closed loop."""
        raise VlatrimError(f"a {self.name} model is not a policy: it predicts no actions, so it cannot be evaluated "
                           "in closed loop")

    # ------------------------------------------------------------------ structure
    def handle(self, model: nn.Module, blocks_path: str | None = None) -> BackboneHandle:
        """Where the language backbone and the other pathways' blocks are (default: found by structure)."""
        return locate_backbone(model, blocks_path)

    def pathways(self, model: nn.Module, handle: BackboneHandle | None = None) -> dict[str, list[BlockList]]:
        """Block lists by pathway: ``language``, ``vision``, ``action``."""
        return (handle or self.handle(model)).pathways()

    def couplings(self, model: nn.Module, handle: BackboneHandle) -> list[Coupling]:
        """Cuts one block list forces on another (default: none, block lists are independent)."""
        return []

    def check_cut(self, model: nn.Module, handle: BackboneHandle, drops: dict[str, list[int]]) -> None:
        """Refuse (``VlatrimError``) a set of block removals, keyed by block-list path, that the
        architecture cannot express. Called after couplings were applied, before anything is cut."""

    def check_plan(self, model: nn.Module, handle: BackboneHandle, plan: PrunePlan) -> None:
        """Refuse (``VlatrimError``) a whole plan (block removals after couplings, head and channel cuts,
        vocabulary) that the architecture cannot express. Called after ``check_cut``, before anything is cut."""

    def cut_partners(self, model: nn.Module, plan: PrunePlan, kept: dict[str, list[int]]) -> None:
        """Cut, in blocks outside the language backbone, the widths its head and channel cuts force there
        (SmolVLA's action expert attends with the VLM's head counts). Called right after the surgery, with
        the plan it carried out and the original indices kept per block list; before ``after_cut``."""

    def after_cut(self, model: nn.Module, kept: dict[str, list[int]]) -> None:
        """Make the family's own config fields true after blocks were removed (``kept``: original
        indices kept, keyed by block-list path; the language backbone's transformers config is already
        fixed by the surgery)."""

    # ------------------------------------------------------------------ recovery
    def trainable(self, model: nn.Module, method: str) -> list[str]:
        """Names of the parameters that recovery ``method`` trains in full (``vlatrim recover --method full``
        sets ``requires_grad`` to exactly these; LoRA trains its adapters and ``lora_defaults``' prefixes
        instead). Default: the parameters that require grad as the model was loaded."""
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def lora_defaults(self, model: nn.Module) -> tuple[str, tuple[str, ...]]:
        """(module scope LoRA adapts by default, parameter prefixes trained in full beside the adapters)."""
        return "", ()

    def check_teacher(self, student: nn.Module, teacher: nn.Module) -> None:
        """Refuse (``VlatrimError``, naming the field and both values) a distillation teacher whose
        predictions are not in the student's units: another action space, chunk or normalisation.
        Families that offer ``distill`` override it; the default refuses every teacher."""
        raise VlatrimError(f"a {self.name} model cannot be distilled: its family compares no predictions")

    def distill_outputs(self, student: nn.Module, teacher: nn.Module,
                        batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The student's loss dict (with gradients) and the teacher's (without), on the same batch and the same
        random draws, each with ``"raw"``: the prediction distillation compares, in normalised action units
        ((B, T, A) values or (B, T, A, K) logits), and optionally ``"raw_mask"`` (B, T): the chunk steps to
        compare (default: all). Default: ``loss`` of each (a deterministic loss whose output carries
        ``raw``); a batch with ``teacher_input_ids`` (the student's vocabulary was cut) gives the teacher
        its own token ids."""
        out = self.loss(student, batch)
        t_batch = batch
        if "teacher_input_ids" in batch:
            t_batch = {**batch, "input_ids": batch["teacher_input_ids"],
                       "attention_mask": batch["teacher_attention_mask"]}
        with torch.no_grad():
            t_out = self.loss(teacher, t_batch)
        return out, t_out


FAMILIES: Registry[PolicyFamily] = Registry("policy family")
"""Registered family instances by name; ``family_of`` asks them in registration order, ``transformers`` last."""


def register_family(cls: type[PolicyFamily]) -> type[PolicyFamily]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    FAMILIES.register(cls.name)(cls())
    return cls


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, or VlatrimError naming what is missing or wrong."""
    if not path.exists():
        raise VlatrimError(f"model {str(path)!r} does not exist; give a checkpoint directory")
    if not path.is_dir():
        raise VlatrimError(f"model {str(path)!r} is not a directory; give a checkpoint directory (config.json + "
                           "safetensors weights)")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise VlatrimError(f"checkpoint directory {str(path)!r} has no config.json")
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VlatrimError(f"{str(cfg)!r} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise VlatrimError(f"{str(cfg)!r} is not a JSON object")
    return raw


def family_of(path: str | Path, families: Sequence[str] | None = None) -> PolicyFamily:
    """The family whose ``recognizes`` accepts the checkpoint directory ``path``.

    Families are asked in registration order, the generic transformers family last.

    Raises:
        VlatrimError: no such directory, no config.json, or no family recognises it (the message
            lists the registered families).
    """
    load_plugins()
    path = Path(path)
    raw = read_config(path)
    names = list(families) if families is not None else _ordered_names()
    for name in names:
        fam = FAMILIES.get(name)
        if fam.recognizes(path, raw):
            if QUANT_KEY in raw:  # a quantized checkpoint of this family (vlatrim quantize)
                from vlatrim.families.quantized import quantized_family

                return quantized_family(fam, raw[QUANT_KEY])
            return fam
    kind = raw.get("model_type") or raw.get("type")
    raise VlatrimError(f"no policy family recognises {str(path)!r} (config.json names {kind!r}); registered "
                       f"families: {', '.join(_ordered_names())}")


def _ordered_names() -> list[str]:
    # The catch-all transformers family is asked last, so specific families win.
    names = [n for n in FAMILIES.in_order() if n != "transformers"]
    return names + (["transformers"] if "transformers" in FAMILIES else [])


def family_for_model(model: nn.Module) -> PolicyFamily:
    """The family that ``owns`` an in-memory model (the transformers family for any ``PreTrainedModel``)."""
    load_plugins()
    for name in _ordered_names():
        if FAMILIES.get(name).owns(model):
            return FAMILIES.get(name)
    raise VlatrimError(f"no policy family owns a {type(model).__name__}; registered families: "
                       f"{', '.join(_ordered_names())}")


def load(path: str | Path, device: str | torch.device = "cpu",
         trust_remote_code: bool = False) -> tuple[PolicyFamily, nn.Module]:
    """(family, model) for the checkpoint directory ``path``."""
    fam = family_of(path)
    return fam, fam.load(Path(path), device=device, trust_remote_code=trust_remote_code)
