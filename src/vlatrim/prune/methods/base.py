"""What every pruning method shares: the base class, its registry, the context it plans in, and the
budget arithmetic the selectors share.

A pruning method is one module holding one ``PruneMethod`` subclass registered in ``PRUNE_METHODS``
(and, usually, a plain selector function that turns indices or scores into a ``PrunePlan`` for library
use). ``vlatrim.prune.api.make_plan`` asks every registered method, in ``STAGES`` order, whether the
request ``applies`` to it and merges the plans of those that do; adding a method touches no other file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.prune.plan import PrunePlan
from vlatrim.registry import Registry

if TYPE_CHECKING:  # api imports this module; the request type is only needed for annotations
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest

# The order methods plan in. Budgets subtract what earlier stages already remove, so the vocabulary
# (the cheapest parameters) goes first, explicit widths next, and depth (or a budget) last.
STAGES = ("vocabulary", "width", "depth")
# Stages where one request may use one method only (two depth choices would fight over one budget).
EXCLUSIVE_STAGES = ("vocabulary", "depth")


@dataclass
class PlanContext:
    """What a pruning method may need beyond the request, the handle and the scores.

    Args:
        model: the model being pruned (a VLA that tokenizes for itself has ``.tokenizer``).
        params_before: ``vlatrim.models.params.params_by_component(handle)`` before any cut.
        plan: the plan so far: what the methods earlier in ``STAGES`` order already remove (budgets
            subtract it). ``make_plan`` updates it after each method.
        model_dir: the checkpoint directory the model came from, if any.
        load_tokenizer: ``(required) -> tokenizer`` of ``model_dir``; with ``required=False`` it returns
            None instead of raising when there is none.
    """

    model: nn.Module | None
    params_before: dict[str, int]
    plan: PrunePlan = field(default_factory=PrunePlan)
    model_dir: Path | None = None
    load_tokenizer: Callable[[bool], Any] | None = None
    _tokenizer: Any = field(default=None, init=False, repr=False)

    def tokenizer(self, required: bool = True) -> Any:
        """The model's own tokenizer (a VLA that tokenizes for itself), else the one in ``model_dir``
        (loaded once), else None.

        Args:
            required: raise a VlatrimError when ``model_dir`` holds no tokenizer vlatrim can load.
        """
        if self._tokenizer is None:
            self._tokenizer = getattr(self.model, "tokenizer", None)
        if self._tokenizer is None and self.load_tokenizer is not None:
            self._tokenizer = self.load_tokenizer(required)
        return self._tokenizer


class PruneMethod:
    """Base of all pruning methods: one way of choosing what a request removes. Methods choose indices
    and never cut (``surgery.apply_plan`` does) and never measure importance (``vlatrim analyze`` does).

    Subclasses set the class attributes below, register with ``@PRUNE_METHODS.register(name)``, and
    implement ``plan``; ``applies`` defaults to "the request names this method in
    ``PruneRequest.method_options``", which is how a method registered outside vlatrim is asked for.

    Attributes:
        name: registry name, recorded in ``PrunePlan.methods`` (non-empty str; unique).
        stage: one of ``STAGES``: ``vocabulary``, ``width`` or ``depth`` (planned in that order; at most
            one method of an ``EXCLUSIVE_STAGES`` stage applies to a request).
    """

    name: ClassVar[str]
    stage: ClassVar[str]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        name = cls.__dict__.get("name")
        if not isinstance(name, str) or not name:
            raise TypeError(f"pruning method {cls.__name__} must set class attribute name (a non-empty str)")
        if getattr(cls, "stage", None) not in STAGES:
            raise TypeError(f"pruning method {cls.__name__} must set class attribute stage (one of {STAGES})")

    def applies(self, request: PruneRequest) -> bool:
        """Whether ``request`` asks for this method.

        Args:
            request: the pruning request.
        Returns:
            True when the method should plan for this request.
        """
        return self.name in (request.method_options or {})

    def options(self, request: PruneRequest) -> dict[str, Any]:
        """This method's entry of ``request.method_options`` (empty when absent)."""
        return dict((request.method_options or {}).get(self.name) or {})

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        """What to remove.

        Args:
            request: the pruning request.
            handle: the located backbone (``locate_backbone``), before any cut.
            scores: the loaded ``--scores`` analysis.json (``vlatrim.prune.analysis_io.Analysis``), or None.
            context: the model, parameters before, tokenizer, and the plan of the earlier methods.
        Returns:
            A ``PrunePlan`` with ``methods`` naming what made it (an empty plan removes nothing).
        """
        raise NotImplementedError


PRUNE_METHODS: Registry[type[PruneMethod]] = Registry("pruning method")
"""Method name -> ``PruneMethod`` subclass (each registers itself from its own module)."""


def ordered_methods() -> list[type[PruneMethod]]:
    """Every registered method in planning order: by stage (``STAGES``), then by name."""
    classes = [PRUNE_METHODS.get(n) for n in PRUNE_METHODS.names()]
    for n, cls in zip(PRUNE_METHODS.names(), classes):
        if cls.name != n:
            raise TypeError(f"pruning method {cls.__name__} is registered as {n!r} but its name is {cls.name!r}")
    return sorted(classes, key=lambda c: (STAGES.index(c.stage), c.name))


def check_ratio(ratio: float, what: str = "--ratio") -> float:
    """A removal fraction must lie in [0, 1): 0 removes nothing, 1 would remove everything."""
    if not (0.0 <= float(ratio) < 1.0):
        raise VlatrimError(f"{what} {ratio} is outside [0, 1); e.g. 0.5 removes half")
    return float(ratio)


def block_params(handle: Any) -> list[int]:
    """Parameters of each backbone block."""
    return [l.num_params for l in handle.layouts]


def budget_to_remove(request: PruneRequest, backbone: int) -> int:
    """Backbone parameters a ``--ratio`` / ``--target-params`` budget asks to remove."""
    if request.ratio is not None:
        return int(round(check_ratio(request.ratio) * backbone))
    if not 0 < request.target_params <= backbone:
        raise VlatrimError(f"--target-params {request.target_params} is outside (0, {backbone}] (the backbone's size)")
    return backbone - int(request.target_params)


def vocab_params_removed(handle: Any, plan: PrunePlan, before: dict[str, int]) -> int:
    """Parameters the plan's vocabulary cut removes (the embedding rows, and the untied LM head's)."""
    if plan.vocab is None:
        return 0
    per_token = handle.hidden_size * (2 if before["lm_head"] else 1)
    return per_token * (handle.vocab_size - len(plan.vocab))
