"""``vlatrim study`` on real Meta-World demonstrations with closed-loop evaluation (rendering: integration)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from vlatrim.cli.main import main

pytestmark = pytest.mark.integration


@pytest.mark.skipif(importlib.util.find_spec("vlatrim.sim.backends.metaworld.demos") is None
                    or importlib.util.find_spec("vlatrim.sim.evaluate") is None,
                    reason="demo generation / closed-loop evaluation not in this build")
def test_study_generates_demos_and_measures_success(tmp_path) -> None:
    out = tmp_path / "s"
    args = ["study", "--out", str(out), "--preset", "tiny", "--tasks", "drawer-close", "--episodes-per-task", "3",
            "--closed-loop", "True", "--eval-episodes", "2"]
    assert main(args) == 0
    s = json.loads((out / "study.json").read_text())
    assert s["data"]["generated"] and s["data"]["episodes"] == 3 and (out / "demos" / "meta" / "info.json").is_file()
    assert "closed_loop_eval" not in s["unavailable"]
    for v in s["variants"]:
        assert 0.0 <= v["success_rate"] <= 1.0 and set(v["success_per_task"]) == {"drawer-close-v3"}
    assert (out / "base_eval" / "closed_loop" / "eval.json").is_file()
    assert "success_vs_blocks.png" in s["plots"]
    # Everything finished: a second run resumes every stage, demos included.
    assert main(args + ["--resume"]) == 0
    again = json.loads((out / "study.json").read_text())
    assert all(v["status"] == "resumed" for v in again["stages"].values()) and "demos" in again["stages"]
