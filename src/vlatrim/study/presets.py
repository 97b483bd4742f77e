"""Named study presets: starting settings that ``vlatrim study --preset NAME`` fills and flags override.

Each registers a function returning ``StudyConfig`` field values; fields it leaves out keep the
dataclass defaults. ``STUDY_PRESET_HELP`` says for each what it is and what it costs (``--help``).

A name that is also a ``vlatrim train`` preset means the same thing in both verbs: the study's base
model is what ``vlatrim train --preset NAME`` trains (that preset, its steps and batch, the tasks it
was made for). ``tests/test_presets.py`` holds every shared name to this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlatrim.registry import Registry

STUDY_PRESETS: Registry[Callable[[], dict[str, Any]]] = Registry("study preset")


@dataclass(frozen=True)
class PresetHelp:
    """What a study preset is for and what it costs (a measured wall time with its source, or "not
    measured"; never an estimate)."""

    description: str
    cost: str


STUDY_PRESET_HELP: dict[str, PresetHelp] = {}


def _preset(name: str, description: str, cost: str) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], dict[str, Any]]]:
    def deco(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        STUDY_PRESET_HELP[name] = PresetHelp(description, cost)
        return STUDY_PRESETS.register(name)(fn)

    return deco


@_preset("demo", "what `make demo` runs: drawer-close at 64 px, 12 demos, base = the quick training preset for "
                 "300 steps, 2 and 4 of its 6 blocks removed, full recovery 100 steps, 8 episodes per variant",
         "4 min 5 s on the 2-core CPU, base in bf16 (stage times summed; benchmarks/results/study_demo.json)")
def _demo() -> dict[str, Any]:
    # One easy task at 64 px, MiniLM-L6 with the quick training preset's architecture (5 conv stages:
    # 2x2 = 4 image tokens at 64 px) but 300 steps, 2 and 4 of its 6 blocks removed.
    return dict(tasks=("drawer-close",), episodes_per_task=12, image_size=64, train_preset="quick",
                train_steps=300, batch_size=32, analysis_scorers=("drop_one", "block_influence", "gateprobe"),
                scorers=("drop_one",), analysis_batches=4, analysis_batch_size=16, ratios=(0.34, 0.67),
                methods=("full",), recover_steps=100, eval_episodes=8, eval_max_steps=120, bench_repeats=10)


@_preset("smoke", "a smoke run of the real pipeline with closed-loop evaluation: the demo's shape with less of "
                  "everything (6 demos, 100 base steps at batch 16, half the blocks removed, 4 episodes)",
         "not measured")
def _smoke() -> dict[str, Any]:
    return dict(tasks=("drawer-close",), episodes_per_task=6, image_size=64, train_preset="quick",
                train_steps=100, batch_size=16, analysis_scorers=("drop_one", "block_influence"),
                scorers=("drop_one",), analysis_batches=2, analysis_batch_size=8, ratios=(0.5,),
                methods=("full",), recover_steps=40, eval_episodes=4, eval_max_steps=100, bench_repeats=5)


@_preset("mt10", "MT10 x 50 demos at 96 px, base = `vlatrim train --preset mt10` (15000 steps at batch 32), "
                 "1/6 to 5/6 of the blocks removed by drop-one and GateProbe, full and LoRA recovery 2000 "
                 "steps, 20 episodes per task; meant for one GPU",
         "not measured as a study; its base training alone took 89 min on the 2-core CPU in bf16 "
         "(benchmarks/results/mt10_preset.json)")
def _mt10() -> dict[str, Any]:
    # The drop-then-recovery sweep at MT10 scale: full and LoRA recovery, two block scorers. The base
    # is exactly `vlatrim train --preset mt10` (0.706 closed-loop success on MT10).
    return dict(tasks=("mt10",), episodes_per_task=50, image_size=96, train_preset="mt10", train_steps=15000,
                batch_size=32, analysis_scorers=("drop_one", "block_influence", "gateprobe", "angular", "cka"),
                scorers=("drop_one", "gateprobe"), analysis_batches=16, analysis_batch_size=32,
                ratios=(0.17, 0.34, 0.5, 0.67, 0.84), methods=("full", "lora"), recover_steps=2000,
                eval_episodes=20, eval_max_steps=500, eval_workers=8, bench_repeats=50, device="auto")


# The 2-core CPU budget studies of both protocols: one base (the quick preset's tasks, demos, steps and
# seeds: the transfer preset's pretraining is quick-budgets' base), the same cuts, budgets and evaluation,
# so the two protocols read side by side.
_CPU_BUDGET_STUDY: dict[str, Any] = dict(
    tasks=("drawer-close", "button-press-topdown", "drawer-open", "window-open"), episodes_per_task=40, image_size=96,
    train_preset="quick", train_steps=1600, batch_size=32, analysis_scorers=("drop_one", "block_influence"),
    scorers=("drop_one",), analysis_batches=8, analysis_batch_size=16, ratios=(0.5, 0.84), methods=("full",),
    recover_budgets=(0.2, 1.0), eval_episodes=20, eval_max_steps=300, eval_workers=2, bench_repeats=10)


@_preset("quick-budgets", "the deployment protocol's budget curve on the 2-core CPU: base = `vlatrim train --preset "
                          "quick` on its 4 tasks (1600 steps at batch 32, 40 demos each, 96 px), half and 5/6 of "
                          "the blocks removed by drop-one, every variant and the unpruned model fine-tuned (full) at "
                          "0.2 and 1.0 of the base's budget, 20 episodes per task",
         "not measured")
def _quick_budgets() -> dict[str, Any]:
    return dict(protocol="deployment", **_CPU_BUDGET_STUDY)


# Target tasks of the transfer presets: Meta-World tasks outside MT10 (and outside the quick preset's).
TRANSFER_TARGETS_CPU = ("door-close", "handle-press", "plate-slide", "button-press")
TRANSFER_TARGETS_GPU = ("button-press", "coffee-button", "dial-turn", "door-close", "faucet-close", "faucet-open",
                        "handle-press", "lever-pull", "plate-slide", "sweep-into")


@_preset("transfer", "the paper's protocol on the 2-core CPU: pretrain = `vlatrim train --preset quick` on its 4 "
                     "tasks (1600 steps at batch 32, 40 demos each, 96 px), then on door-close, handle-press, "
                     "plate-slide and button-press (40 demos each): zero-shot evaluation, drop-one scores on the "
                     "targets, half and 5/6 of the blocks removed, every variant and the unpruned model fine-tuned "
                     "(full) at 0.2 and 1.0 of the base's budget, 20 episodes per target",
         "47 min on the quiet 2-core CPU, one command from an empty directory (benchmarks/results/"
         "study_transfer.json): 9 min pretraining, 22 min fine-tuning, 12 min closed-loop evaluation")
def _transfer() -> dict[str, Any]:
    return dict(protocol="transfer", target_tasks=TRANSFER_TARGETS_CPU, **_CPU_BUDGET_STUDY)


@_preset("transfer-mt10", "the paper's protocol for one GPU: pretrain = `vlatrim train --preset mt10` on MT10 "
                          "(15000 steps at batch 32, 50 demos each), targets = ten MT50 tasks outside MT10, every "
                          "ratio from 1/6 to 5/6, full and LoRA at 0.1, 0.2, 0.5 and 1.0 of the base's budget, 20 "
                          "episodes per target",
         "not measured")
def _transfer_mt10() -> dict[str, Any]:
    return dict(protocol="transfer", tasks=("mt10",), target_tasks=TRANSFER_TARGETS_GPU, episodes_per_task=50,
                image_size=96, train_preset="mt10", train_steps=15000, batch_size=32,
                analysis_scorers=("drop_one", "block_influence", "gateprobe"), scorers=("drop_one",),
                analysis_batches=16, analysis_batch_size=32, ratios=(0.17, 0.34, 0.5, 0.67, 0.84),
                methods=("full", "lora"), recover_budgets=(0.1, 0.2, 0.5, 1.0), eval_episodes=20,
                eval_max_steps=500, eval_workers=8, bench_repeats=50, device="auto")


@_preset("tiny", "for tests: base = `vlatrim train --preset tiny` (2-block tiny BERT, 20 steps at batch 8), "
                 "half the blocks removed, offline evaluation only",
         "not measured")
def _tiny() -> dict[str, Any]:
    # Tests: the 2-block tiny BERT of the tiny training preset, a handful of steps, offline evaluation only.
    return dict(train_preset="tiny", train_steps=20, batch_size=8, analysis_scorers=("drop_one", "block_influence"),
                scorers=("drop_one",), analysis_batches=1, analysis_batch_size=4, ratios=(0.5,),
                methods=("full",), recover_steps=2, eval_episodes=1, closed_loop=False, bench_repeats=1)


def resolve_study_config(preset: str, overrides: dict[str, Any]):
    """A ``StudyConfig`` from preset ``preset`` with the non-None ``overrides`` applied (validated)."""
    from vlatrim.study.config import StudyConfig

    values = {**STUDY_PRESETS.get(preset)(), **{k: v for k, v in overrides.items() if v is not None}}
    return StudyConfig.from_dict(values)


def study_preset_help() -> str:
    """The ``--preset`` help of ``vlatrim study`` and ``python -m vlatrim.demo``."""
    lines = [f"{n}: {STUDY_PRESET_HELP[n].description}. Cost: {STUDY_PRESET_HELP[n].cost}." for n in STUDY_PRESETS.names()]
    return "\n".join(["Starting settings, which flags override.", *lines])
