"""Closed-loop evaluation: settings validation, output handling, and (integration) real episodes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlatrim.errors import VlatrimError
from vlatrim.sim.evaluate import EpisodeResult, EvalConfig, _summarise, check_out, write_eval


def test_config_validation():
    assert EvalConfig(tasks="mt10", episodes=1).tasks[-1] == "window-close-v3"
    for kw, msg in [({"episodes": 0}, "--episodes must be >= 1"), ({"workers": 0}, "--workers must be >= 1"),
                    ({"max_steps": 600}, r"--max-steps must be in 1..500"), ({"n_action_steps": 0}, "--n-action-steps must be >= 1"),
                    ({"tasks": "reach,pusj"}, "unknown task 'pusj'")]:
        with pytest.raises(VlatrimError, match=msg):
            EvalConfig(**{"tasks": "reach", "episodes": 2, **kw})


def test_summary_numbers():
    cfg = EvalConfig(tasks="reach,push", episodes=2)
    rs = [EpisodeResult("reach-v3", 0, (1, 0), True, 40), EpisodeResult("reach-v3", 1, (1, 1), False, 500),
          EpisodeResult("push-v3", 0, (2, 0), True, 60), EpisodeResult("push-v3", 1, (2, 1), True, 80, None)]
    rs[1].error = "RuntimeError: boom"
    r = _summarise(cfg, "expert", False, rs, 0.0, 1.0, 11.0, 680, 10, [2] * 10, 0.5, 2)
    assert r.per_task["reach-v3"]["success_rate"] == 0.5 and r.per_task["reach-v3"]["mean_steps"] == 270.0
    assert r.per_task["reach-v3"]["mean_steps_success"] == 40.0 and r.per_task["reach-v3"]["errors"] == 1
    assert r.per_task["reach-v3"]["wilson95"] == pytest.approx([0.0945, 0.9055], abs=1e-4)  # Wilson 1/2
    assert r.overall["mean_success"] == 0.75 and r.overall["pooled_success"] == 0.75 and r.overall["errors"] == 1
    assert r.timing["env_steps_per_second"] == 68.0 and r.timing["wall_seconds"] == 11.0 and r.timing["rollout_seconds"] == 10.0
    assert r.settings["policy"] == "expert" and r.settings["episodes"] == 2


def test_out_checks_and_atomic_write(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(VlatrimError, match="is not empty"):
        check_out(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(VlatrimError, match="exists and is not a directory"):
        check_out(tmp_path / "file")
    check_out(tmp_path / "new" / "deeper")  # absent is fine
    cfg = EvalConfig(tasks="reach", episodes=1)
    r = _summarise(cfg, "random", False, [EpisodeResult("reach-v3", 0, (1, 0), False, 500)], 0.0, 0.0, 1.0, 500, 500, [1] * 500, 0.1, 1)
    frames = [np.full((8, 8, 3), i * 40, np.uint8) for i in range(3)]
    path = write_eval(tmp_path / "ev", r, {"reach-v3_ep0": frames})
    data = json.loads(path.read_text())
    assert data["per_task"]["reach-v3"]["successes"] == 0 and data["overall"]["episodes"] == 1
    assert (tmp_path / "ev" / "videos" / "reach-v3_ep0.gif").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "file", "full"]  # no temp dirs left
    with pytest.raises(VlatrimError, match="not an empty directory"):
        write_eval(tmp_path / "ev", r, {})


class _ChunkedExpert:
    """Expert actions as chunks of 3 (the same action repeated); returns NaN on one chosen call."""

    uses_images = True

    def __init__(self, nan_call: int | None) -> None:
        from vlatrim.sim.policy import ExpertPolicy

        self.expert, self.nan_call, self.calls, self.resets, self.seen = ExpertPolicy(), nan_call, 0, [], []

    def reset(self, n):
        self.resets.append(n)

    def predict(self, obs):
        self.calls += 1
        self.seen.append((obs["image"].shape, obs["image"].dtype, obs["state"].shape, tuple(obs["instruction"]), tuple(obs["step"])))
        a = np.repeat(self.expert.predict(obs), 3, axis=1)  # (B, 3, 4)
        if self.calls == self.nan_call:
            a[:] = np.nan
        return a


@pytest.mark.integration
def test_chunks_run_in_the_loop_and_a_crash_fails_only_its_episode():
    from vlatrim.sim.evaluate import evaluate

    policy = _ChunkedExpert(nan_call=5)
    cfg = EvalConfig(tasks="drawer-close", episodes=2, workers=1, n_action_steps=2, image_size=32, max_steps=300)
    r, videos = evaluate(policy, cfg, "chunked-expert", progress=False)
    ep0, ep1 = r.episodes
    assert ep0["success"] is False and "non-finite" in ep0["error"] and ep0["steps"] == 8  # 4 calls x 2 steps
    assert ep1["success"] is True and ep1["error"] is None
    # Each call after the first of an episode follows exactly 2 executed actions (n_action_steps).
    assert policy.calls == 5 + math.ceil(ep1["steps"] / 2)
    assert policy.seen[0][:3] == ((1, 32, 32, 3), np.uint8, (1, 4)) and policy.seen[0][3] == ("push the drawer closed",)
    assert [s[4][0] for s in policy.seen[:5]] == [0, 2, 4, 6, 8] and policy.resets == [1]
    assert r.per_task["drawer-close-v3"]["errors"] == 1 and r.per_task["drawer-close-v3"]["successes"] == 1 and not videos


@pytest.mark.integration
def test_cli_expert_two_episodes_succeed_with_video(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    out = tmp_path / "ev"
    log = open(tmp_path / "log", "w")
    p = subprocess.run([sys.executable, "-m", "vlatrim", "eval", "--policy", "expert", "--tasks", "reach-v3", "--episodes", "2",
                        "--out", str(out), "--workers", "2", "--video", "--video-episodes", "1", "--image-size", "48"],
                       env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
    assert p.returncode == 0, (tmp_path / "log").read_text()
    data = json.loads((out / "eval.json").read_text())
    t = data["per_task"]["reach-v3"]
    assert t["successes"] == 2 and t["episodes"] == 2 and t["errors"] == 0 and data["overall"]["mean_success"] == 1.0
    assert [e["start"] for e in data["episodes"]][0] != [e["start"] for e in data["episodes"]][1]
    assert data["settings"]["workers_used"] == 2 and data["settings"]["seed"] == 0
    import imageio.v3 as iio

    gif = iio.imread(out / "videos" / "reach-v3_ep0.gif")
    assert gif.shape[1:3] == (48, 48) and len(gif) == data["episodes"][0]["steps"] + 1  # reset frame + one per step
