"""The pruning-method interface: a method defined here (not in the library) registers and ``make_plan``
runs it in stage order with the plan so far; the registry and the base class refuse bad methods; prune
needs neither vlatrim.bench nor vlatrim.analyze."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import vlatrim
from vlatrim.errors import VlatrimError
from vlatrim.models.adapters import locate_backbone
from vlatrim.models.adapters.tiny import TINY_MODELS
from vlatrim.models.params import params_by_component
from vlatrim.prune.analysis_io import Analysis
from vlatrim.prune.api import PruneRequest, make_plan
from vlatrim.prune.methods import PRUNE_METHODS, PlanContext, PruneMethod, ordered_methods
from vlatrim.prune.plan import PrunePlan


@PRUNE_METHODS.register("test-keep-last")
class KeepLast(PruneMethod):
    """Keep the last ``k`` blocks (``method_options={"test-keep-last": {"k": k}}``), and record what the
    earlier stages had planned when it ran."""

    name = "test-keep-last"
    stage = "depth"

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        k = int(self.options(request)["k"])
        return PrunePlan(drop_blocks=list(range(handle.num_blocks - k)), methods=[self.name],
                         notes={"saw_heads": sorted(context.plan.heads), "saw_methods": list(context.plan.methods),
                                "saw_backbone": context.params_before["backbone"]})


def test_a_method_defined_outside_the_library_is_planned_after_the_widths() -> None:
    model = TINY_MODELS.get("llama")()  # 3 blocks, 4 query heads in 2 KV groups
    h = locate_backbone(model)
    plan, before = make_plan(PruneRequest(heads=[2], method_options={"test-keep-last": {"k": 1}}), model, h)
    assert plan.drop_blocks == [0, 1]
    assert plan.methods == ["heads", "test-keep-last"]  # width stage first, then depth
    assert plan.notes["saw_heads"] == [0, 1, 2] and plan.notes["saw_methods"] == ["heads"]
    assert plan.notes["saw_backbone"] == before["backbone"] == params_by_component(h)["backbone"]
    # Not asked for, it stays out of the way.
    plan, _ = make_plan(PruneRequest(drop_blocks=[1]), model, h)
    assert plan.methods == ["drop-blocks"] and plan.drop_blocks == [1]


def test_two_depth_methods_and_unknown_names_are_refused() -> None:
    model = TINY_MODELS.get("llama")()
    h = locate_backbone(model)
    with pytest.raises(VlatrimError, match=r"asks 2 pruning methods to choose the depth: drop-blocks, test-keep-last; ask for one"):
        make_plan(PruneRequest(drop_blocks=[1], method_options={"test-keep-last": {"k": 1}}), model, h)
    with pytest.raises(VlatrimError, match=r"unknown pruning method 'nope'; valid: .*drop-blocks.*test-keep-last"):
        PruneRequest(method_options={"nope": {}})


def test_the_registry_rejects_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="pruning method 'drop-blocks' is already registered"):
        @PRUNE_METHODS.register("drop-blocks")
        class Again(PruneMethod):
            name = "drop-blocks"
            stage = "depth"
    assert PRUNE_METHODS.get("drop-blocks").__name__ == "DropBlocks"  # the original stays


def test_the_base_class_checks_name_and_stage() -> None:
    with pytest.raises(TypeError, match="must set class attribute name"):
        class NoName(PruneMethod):
            stage = "depth"
    with pytest.raises(TypeError, match=r"must set class attribute stage \(one of \('vocabulary', 'width', 'depth'\)\)"):
        class BadStage(PruneMethod):
            name = "test-bad-stage"
            stage = "blocks"


def test_planning_order_is_vocabulary_then_widths_then_depth() -> None:
    builtin = [c.name for c in ordered_methods() if not c.name.startswith("test-")]
    assert builtin == ["vocab", "heads", "mlp", "angular-span", "block-scores", "budget-all", "drop-blocks", "keep-first",
                       "pathway-blocks"]


def test_prune_imports_neither_bench_nor_analyze() -> None:
    # analyze imports train, train imports prune: prune must stand without them (and without bench).
    code = ("import sys, vlatrim.prune, vlatrim.prune.api\n"
            "print(sorted(m for m in sys.modules if m.startswith(('vlatrim.bench', 'vlatrim.analyze'))))")
    env = {**os.environ, "PYTHONPATH": str(Path(vlatrim.__file__).parents[1])}  # this checkout's vlatrim
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"
