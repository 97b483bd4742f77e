"""What every scorer shares: the loss it measures against, the calibration batches, the result type.

A scorer is one class in its own module, registered in ``SCORERS`` under its name. It reads the model
through a ``ScoringContext`` and returns a ``ScoreResult``: one 1-D tensor of scores per unit list
(per block list for block scorers, per block for head / channel scorers), higher = more important.
Scorers never modify the model (hooks only) and never cut.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from vlatrim.errors import VlatrimError
from vlatrim.models.adapters import BackboneHandle, BlockList
from vlatrim.registry import Registry

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch) -> scalar Tensor``: the mean of per-sample losses over the batch."""

LIKELIHOODS = ("nll", "l1", "mse")
UNITS = ("block", "head", "channel", "token")
PATHWAYS = ("language", "vision", "action")


@dataclass
class LossSpec:
    """The loss importance is measured against, and the likelihood behind it.

    The likelihood fixes how the loss's curvature relates to the spread of per-sample gradients (the
    Fisher), which GateProbe uses for its second-order term: for a negative log-likelihood H ~ F; an
    L1 loss is a Laplace NLL times its mean error L, so H ~ F / L; a squared error is a Gaussian NLL
    times 2L, so H ~ F / 2L. When each sample's loss averages ``terms_per_sample`` independent terms
    (T x A action values), the per-sample gradient variance shrinks by that factor and H grows by it.
    """

    fn: LossFn  # (model, batch) -> scalar loss, a mean over the batch's samples
    likelihood: str = "nll"  # "nll" (cross-entropy), "l1" or "mse": the loss's likelihood family
    terms_per_sample: int = 1  # independent loss terms averaged within one sample (T*A for an action chunk)
    name: str = "loss"  # what the loss is, for reports (e.g. "action L1")

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise VlatrimError(f"loss likelihood {self.likelihood!r} is not valid; valid: {', '.join(LIKELIHOODS)}")
        if not isinstance(self.terms_per_sample, int) or self.terms_per_sample < 1:
            raise VlatrimError(f"loss terms_per_sample={self.terms_per_sample!r} must be a positive integer")

    def curvature_scale(self, mean_loss: float) -> float:
        """kappa in H ~ kappa * F (F: mean squared per-sample gradient) at the current mean loss."""
        m = float(self.terms_per_sample)
        if self.likelihood == "nll":
            return m
        denom = max(mean_loss, 1e-12) * (1.0 if self.likelihood == "l1" else 2.0)
        return m / denom


@dataclass
class ScoringContext:
    """Everything a scorer may read. Block scorers cover ``block_lists()``; width scorers the backbone."""

    model: nn.Module  # the model, in eval mode
    handle: BackboneHandle  # where its blocks are (locate_backbone)
    batches: Sequence[Any]  # calibration batches, each accepted by loss.fn
    loss: LossSpec  # what importance is measured against
    pathways: tuple[str, ...] = ("language",)  # which block lists block scorers score
    instructions: Sequence[str] = ()  # the dataset's instruction texts (vocabulary usage)
    tokenizer: Any = None  # the model's tokenizer (vocabulary usage)
    progress: bool = False  # show tqdm bars
    position_mask: Callable[[Any], torch.Tensor | None] | None = None
    """``batch -> (B, S)`` mask of the real (non-padding) positions of the language backbone's input
    sequence, or None when all are real (a family's ``position_mask``). Unset: the batch's
    ``attention_mask``, used where its shape matches the backbone's hidden states."""
    _warned: set[str] = field(default_factory=set, init=False, repr=False)  # block lists warned about a mask

    def __post_init__(self) -> None:
        bad = [p for p in self.pathways if p not in PATHWAYS]
        if bad:
            raise VlatrimError(f"unknown pathway(s) {', '.join(bad)}; valid: {', '.join(PATHWAYS)}")
        if len(self.batches) == 0:
            raise VlatrimError("no calibration batches; give at least one batch (--batches >= 1)")

    def block_lists(self) -> list[BlockList]:
        """The block lists of the selected pathways, the language backbone first."""
        all_lists = self.handle.pathways()
        return [bl for p in self.pathways for bl in all_lists[p]]

    def real_positions(self, batch: Any, bl: BlockList, h: torch.Tensor) -> torch.Tensor | None:
        """Bool mask over the leading dims of ``h`` (B, S) marking real positions of block list ``bl``'s
        hidden states ``h`` (B, S, D) for ``batch``; None when every position counts.

        Only the language backbone's sequence carries padding (an instruction padded to a fixed length);
        other block lists (vision towers, action experts) count every position. A mask whose shape does
        not match ``h`` is ignored with a warning, since it describes some other sequence.
        """
        if bl.pathway != "language":
            return None
        if self.position_mask is not None:
            mask = self.position_mask(batch)
        else:
            mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is None:
            return None
        if tuple(mask.shape) != tuple(h.shape[:-1]):
            if bl.path not in self._warned:
                self._warned.add(bl.path)
                log.warning("position mask %s does not match %s hidden states %s; averaging over all positions",
                            tuple(mask.shape), bl.path, tuple(h.shape))
            return None
        return mask.to(device=h.device).bool()

    def iter_batches(self, desc: str) -> Iterator[Any]:
        yield from tqdm(self.batches, desc=desc, disable=not self.progress, leave=False)

    def loss_value(self, batch: Any) -> torch.Tensor:
        out = self.loss.fn(self.model, batch)
        if not torch.is_tensor(out) or out.numel() != 1:
            raise VlatrimError(f"loss_fn must return a scalar tensor, got {type(out).__name__}"
                               f"{tuple(out.shape) if torch.is_tensor(out) else ''}")
        return out.reshape(())

    @torch.no_grad()
    def mean_loss(self, desc: str = "loss") -> float:
        """Mean loss over the calibration batches (no gradients)."""
        vals = [self.loss_value(b).float().item() for b in self.iter_batches(desc)]
        return sum(vals) / len(vals)


@dataclass
class ScoreResult:
    """Scores keyed by unit list: block-list path (block scorers) or block path (head / channel scorers).

    Every tensor is 1-D float, higher = more important to the loss. ``extras`` holds JSON-ready
    side results (e.g. the angular-distance span matrix, per-KV-group head scores).
    """

    scores: dict[str, torch.Tensor]
    extras: dict[str, Any] = field(default_factory=dict)


class Scorer:
    """Base of all scorers. Subclasses are dataclasses (their fields are options), declare their metadata
    as class attributes and implement ``score(ctx)``, which must not change the model.

    The metadata travels with the scores into ``analysis.json`` (``run_scorers`` records it in each
    scorer's entry), which is how ``vlatrim prune`` knows what a score means without a list of names:

    Attributes:
        name: registry name (``SCORERS``), also the key of the scorer's entry in analysis.json.
        unit: what one score rates, one of ``UNITS``: ``block`` (one score per block of a block list),
            ``head`` (per query head of each block), ``channel`` (per MLP channel of each block),
            ``token`` (per vocabulary row).
        loss_units: True when a score estimates the loss increase of removing its unit (measured or a
            Taylor estimate), so scores of different units can be compared on one scale
            (``--budget-units all`` accepts only these).
        preference: rank among the scorers of its unit for being the default ranking when none is named;
            lower = preferred (ties: by name).
    """

    name: ClassVar[str]
    unit: ClassVar[str]  # one of UNITS
    loss_units: ClassVar[bool]
    preference: ClassVar[int]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not isinstance(cls.__dict__.get("name"), str) or cls.__dict__.get("unit") not in UNITS:
            raise TypeError(f"scorer {cls.__name__} must set class attributes name (str) and unit (one of {UNITS})")
        if not isinstance(getattr(cls, "loss_units", None), bool):
            raise TypeError(f"scorer {cls.__name__} must set class attribute loss_units (bool): whether its scores "
                            "estimate the loss increase of removing the unit")
        pref = getattr(cls, "preference", None)
        if not isinstance(pref, int) or isinstance(pref, bool):
            raise TypeError(f"scorer {cls.__name__} must set class attribute preference (int, lower = preferred "
                            "default ranking of its unit)")

    @classmethod
    def metadata(cls) -> dict[str, Any]:
        """What analysis.json records about the scorer: ``{"unit", "loss_units", "preference"}``."""
        return {"unit": cls.unit, "loss_units": cls.loss_units, "preference": cls.preference}

    def check(self, ctx: ScoringContext) -> None:
        """Refuse (``VlatrimError``) a context this scorer cannot score. Every scorer of a run is checked
        before the first one runs, so a refusal costs no scoring time. Default: every context is fine."""

    def score(self, ctx: ScoringContext) -> ScoreResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


SCORERS: Registry[type[Scorer]] = Registry("scorer")
"""Scorer name -> class (each registers itself from its own module under ``vlatrim.analyze.scorers``)."""
