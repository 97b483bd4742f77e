"""Named study presets: starting settings that ``vlatrim study --preset NAME`` fills and flags override.

Each registers a function returning ``StudyConfig`` field values; fields it leaves out keep the
dataclass defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlatrim.registry import Registry

STUDY_PRESETS: Registry[Callable[[], dict[str, Any]]] = Registry("study preset")


@STUDY_PRESETS.register("demo")
def _demo() -> dict[str, Any]:
    # `make demo` on a 2-core CPU (4 min measured on a quiet one, base trained in bf16): one easy task at 64 px, MiniLM-L6 with
    # the quick training preset (5 conv stages: 2x2 = 4 image tokens), 2 and 4 of its 6 blocks removed.
    return dict(tasks=("drawer-close",), episodes_per_task=12, image_size=64, train_preset="quick",
                train_steps=300, batch_size=32, analysis_scorers=("drop_one", "block_influence", "gateprobe"),
                scorers=("drop_one",), analysis_batches=4, analysis_batch_size=16, ratios=(0.34, 0.67),
                methods=("full",), recover_steps=100, eval_episodes=8, eval_max_steps=120, bench_repeats=10)


@STUDY_PRESETS.register("quick")
def _quick() -> dict[str, Any]:
    # A few minutes on a CPU: the demo's shape with less of everything (a smoke run of the real pipeline).
    return dict(tasks=("drawer-close",), episodes_per_task=6, image_size=64, train_preset="quick",
                train_steps=100, batch_size=16, analysis_scorers=("drop_one", "block_influence"),
                scorers=("drop_one",), analysis_batches=2, analysis_batch_size=8, ratios=(0.5,),
                methods=("full",), recover_steps=40, eval_episodes=4, eval_max_steps=100, bench_repeats=5)


@STUDY_PRESETS.register("mt10")
def _mt10() -> dict[str, Any]:
    # One GPU: the REFERENCE.md probe at MT10 scale, every recovery method and two block scorers.
    return dict(tasks=("mt10",), episodes_per_task=50, image_size=96, train_preset="mt10", train_steps=20000,
                batch_size=64, analysis_scorers=("drop_one", "block_influence", "gateprobe", "angular", "cka"),
                scorers=("drop_one", "gateprobe"), analysis_batches=16, analysis_batch_size=32,
                ratios=(0.17, 0.34, 0.5, 0.67, 0.84), methods=("full", "lora"), recover_steps=2000,
                eval_episodes=20, eval_max_steps=500, eval_workers=8, bench_repeats=50, device="auto")


@STUDY_PRESETS.register("tiny")
def _tiny() -> dict[str, Any]:
    # Tests and smoke runs: the 2-block tiny BERT, a handful of steps, offline evaluation only.
    return dict(train_preset="tiny", train_steps=4, batch_size=4, analysis_scorers=("drop_one", "block_influence"),
                scorers=("drop_one",), analysis_batches=1, analysis_batch_size=4, ratios=(0.5,),
                methods=("full",), recover_steps=2, eval_episodes=1, closed_loop=False, bench_repeats=1)


def resolve_study_config(preset: str, overrides: dict[str, Any]):
    """A ``StudyConfig`` from preset ``preset`` with the non-None ``overrides`` applied (validated)."""
    from vlatrim.study.config import StudyConfig

    values = {**STUDY_PRESETS.get(preset)(), **{k: v for k, v in overrides.items() if v is not None}}
    return StudyConfig.from_dict(values)
