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
    r = _summarise(cfg, "expert", False, rs, 0.0, 1.0, 11.0, 680, 10, [2] * 10, 0.5, 2, 1)
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
    r = _summarise(cfg, "random", False, [EpisodeResult("reach-v3", 0, (1, 0), False, 500)], 0.0, 0.0, 1.0, 500, 500, [1] * 500, 0.1, 1, 1)
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
    # One slot: the two episodes run one after the other, so the call sequence is exact.
    cfg = EvalConfig(tasks="drawer-close", episodes=2, workers=1, envs_per_worker=1, n_action_steps=2, image_size=32,
                     max_steps=300)
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
@pytest.mark.integration
def test_slots_do_not_change_results():
    # Episodes are seeded by index: running two at once per worker (double-buffered slots) must give
    # every episode exactly the result it gets in plain lock-step.
    from vlatrim.sim.evaluate import evaluate
    from vlatrim.sim.policy import ExpertPolicy

    runs = {}
    for per_worker in (1, 2):
        cfg = EvalConfig(tasks="drawer-close,reach", episodes=3, workers=1, envs_per_worker=per_worker, max_steps=150)
        r, _ = evaluate(ExpertPolicy(), cfg, "expert", progress=False)
        assert r.settings["envs_per_worker_used"] == per_worker
        runs[per_worker] = [(e["task"], e["episode"], e["success"], e["steps"]) for e in r.episodes]
    assert runs[1] == runs[2] and all(e[2] for e in runs[1])


class _KillerExpert:
    """The expert, which SIGKILLs the (single) worker process on its ``kill_call``-th call."""

    uses_images = False

    def __init__(self, kill_call: int) -> None:
        from vlatrim.sim.policy import ExpertPolicy

        self.expert, self.kill_call, self.calls = ExpertPolicy(), kill_call, 0

    def reset(self, n):
        pass

    def predict(self, obs):
        import multiprocessing as mp
        import os
        import signal

        self.calls += 1
        if self.calls == self.kill_call:
            (child,) = mp.active_children()
            os.kill(child.pid, signal.SIGKILL)
        return self.expert.predict(obs)


@pytest.mark.integration
def test_a_killed_worker_fails_its_episodes_in_flight_and_is_replaced():
    from vlatrim.sim.evaluate import evaluate

    cfg = EvalConfig(tasks="reach", episodes=4, workers=1, envs_per_worker=2, max_steps=100)
    r, _ = evaluate(_KillerExpert(kill_call=3), cfg, "killer", progress=False)
    eps = r.episodes
    # Episodes 0 and 1 were in flight in the worker's two slots when it died; 2 and 3 ran on its replacement.
    assert [e["error"] is not None for e in eps] == [True, True, False, False], eps
    assert all("worker process died" in e["error"] for e in eps[:2])
    assert eps[2]["success"] and eps[3]["success"]


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
