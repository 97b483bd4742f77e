"""End to end on real Meta-World data at tiny size: demos -> vlatrim train -> vlatrim eval (integration)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_demos_train_eval_through_the_cli(tmp_path):
    from vlatrim.cli.main import main

    data, run, ev = tmp_path / "demos", tmp_path / "run", tmp_path / "eval"
    assert main(["data", "metaworld", "--tasks", "drawer-close", "--episodes-per-task", "2", "--image-size", "32",
                 "--out", str(data)]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "4",
                 "--device", "cpu"]) == 0
    summary = json.loads((run / "train.json").read_text())
    assert summary["dataset"]["image_size"] == 32 and summary["dataset"]["held_out_episodes"] == 1
    assert len(summary["held_out"]["l1_per_dim"]) == 4
    assert main(["eval", "--policy", str(run), "--tasks", "drawer-close", "--episodes", "1", "--max-steps", "8",
                 "--out", str(ev)]) == 0
    result = json.loads((ev / "eval.json").read_text())
    # A 4-step model is not expected to succeed; the loop must run it at its image size without errors.
    assert result["settings"]["image_size"] == 32
    assert result["overall"]["episodes"] == 1 and result["overall"]["errors"] == 0
