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

from procs import kill_after_first_line
from vlatrim.errors import VlatrimError
from vlatrim.sim.evaluate import (
    PROGRESS_DIR,
    EpisodeResult,
    EvalConfig,
    EvalStore,
    _summarise,
    check_out,
    run_eval,
    write_eval,
)


def test_config_validation():
    cfg = EvalConfig(tasks="mt10", episodes=1).resolve("metaworld")  # bound to Meta-World: tasks, limit, camera
    assert cfg.tasks[-1] == "window-close-v3" and cfg.max_steps == 500 and cfg.camera == "corner"
    assert cfg.resolve("metaworld") == cfg  # idempotent
    for kw, msg in [({"episodes": 0}, "--episodes must be >= 1"), ({"workers": 0}, "--workers must be >= 1"),
                    ({"max_steps": 600}, r"--max-steps must be in 1..500 \(backend metaworld's limit\), got 600"),
                    ({"n_action_steps": 0}, "--n-action-steps must be >= 1"),
                    ({"tasks": "reach,pusj"}, "unknown task 'pusj'"),
                    ({"camera": "wrist"}, "--camera 'wrist' is not a camera of backend metaworld; valid: corner, corner2")]:
        with pytest.raises(VlatrimError, match=msg):
            EvalConfig(**{"tasks": "reach", "episodes": 2, **kw}).resolve("metaworld")
    with pytest.raises(VlatrimError, match="unknown simulator backend 'mujoco'; valid: metaworld"):
        EvalConfig(tasks="reach", episodes=1).resolve("mujoco")


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
    path = write_eval(tmp_path / "ev", r, {"reach-v3_ep0": frames}, video_format="gif")
    data = json.loads(path.read_text())
    assert data["per_task"]["reach-v3"]["successes"] == 0 and data["overall"]["episodes"] == 1
    assert (tmp_path / "ev" / "videos" / "reach-v3_ep0.gif").stat().st_size > 0
    import imageio.v3 as iio

    np.testing.assert_array_equal(iio.imread(tmp_path / "ev" / "videos" / "reach-v3_ep0.gif")[..., :3], np.stack(frames))  # 3 grey levels: exact
    write_eval(tmp_path / "ev_mp4", r, {"reach-v3_ep0": frames})  # the result's video_format: mp4
    assert (tmp_path / "ev_mp4" / "videos" / "reach-v3_ep0.mp4").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "ev_mp4", "file", "full"]  # no temp dirs left
    with pytest.raises(VlatrimError, match="not an empty directory"):
        write_eval(tmp_path / "ev", r, {})


# ------------------------------------------------------------------------------------------ resume
def _content(path: Path) -> dict:
    """eval.json without what may differ between runs of the same settings (timings)."""
    d = json.loads(path.read_text())
    d.pop("timing")
    for e in d["episodes"]:
        e.pop("seconds")
    return d


def test_store_settings_mismatch_torn_journal_and_refusals(tmp_path):
    cfg = EvalConfig(tasks="reach", episodes=3, max_steps=20)
    out = tmp_path / "ev"
    store = EvalStore(out, cfg, "random")
    assert store.done == [] and (out / PROGRESS_DIR / "settings.json").is_file()
    store.record(EpisodeResult("reach-v3", 1, (5, 1), False, 20), None)
    store.record(EpisodeResult("reach-v3", 0, (5, 0), True, 7), None)
    store.close()
    with open(out / PROGRESS_DIR / "episodes.jsonl", "a") as f:
        f.write('{"task": "reach-v3", "episode": 2, "sta')  # torn by a kill mid-write
    with pytest.raises(VlatrimError, match="holds an unfinished evaluation; add --resume"):
        check_out(out)
    with pytest.raises(VlatrimError, match="holds an unfinished evaluation; add --resume"):
        EvalStore(out, cfg, "random")
    with pytest.raises(VlatrimError, match=r"other settings \(max_steps: run has 20, now 30\)"):
        EvalStore(out, EvalConfig(tasks="reach", episodes=3, max_steps=30), "random", resume=True)
    with pytest.raises(VlatrimError, match=r"other settings \(policy: run has 'random', now 'expert'\)"):
        EvalStore(out, cfg, "expert", resume=True)
    # Workers are not a content setting; finished episodes come back in order, the torn one is dropped.
    store = EvalStore(out, EvalConfig(tasks="reach", episodes=3, max_steps=20, workers=2), "random", resume=True)
    assert [(r.episode, r.success, r.steps, r.start) for r in store.done] == [(0, True, 7, (5, 0)), (1, False, 20, (5, 1))]
    # The episode journaled after the torn line stands on a line of its own: a second resume reads it.
    store.record(EpisodeResult("reach-v3", 2, (5, 2), True, 9), None)
    store.close()
    store = EvalStore(out, cfg, "random", resume=True)
    assert [r.episode for r in store.done] == [0, 1, 2]
    store.close()
    (out / "eval.json").write_text("{}")
    with pytest.raises(VlatrimError, match="already holds a finished evaluation"):
        check_out(out, resume=True)


def test_random_policy_is_seeded_per_episode():
    from vlatrim.sim.policy import RandomPolicy

    def obs(tasks, eps, steps):
        return {"state": np.zeros((len(tasks), 4), np.float32), "task": tasks, "episode": np.array(eps), "step": np.array(steps)}

    a = RandomPolicy(0).predict(obs(["reach-v3", "push-v3"], [3, 0], [7, 0]))
    p = RandomPolicy(0)
    p.predict(obs(["push-v3"], [1], [0]))  # other calls before do not shift an episode's actions
    b = p.predict(obs(["push-v3", "reach-v3"], [0, 3], [0, 7]))
    np.testing.assert_array_equal(a, b[::-1])
    assert a.shape == (2, 1, 4) and np.abs(a).max() <= 1 and not np.array_equal(a, RandomPolicy(1).predict(obs(["reach-v3", "push-v3"], [3, 0], [7, 0])))


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    log = open(out.parent / f"{out.name}.log", "a")  # a file, not a pipe: workers may outlive a killed parent briefly
    return subprocess.Popen([sys.executable, "-m", "vlatrim", "eval", "--policy", "random", "--tasks", "reach-v3", "--episodes", "8",
                             "--max-steps", "150", "--out", str(out), *extra], env=env, stdout=log, stderr=subprocess.STDOUT)


def test_eval_killed_then_resumed_equals_uninterrupted(tmp_path):
    """SIGKILL a `vlatrim eval` run after its first finished episode; --resume completes it with the same eval.json."""
    from vlatrim.sim.policy import RandomPolicy

    p = _cli(tmp_path / "b")
    n_done = kill_after_first_line(p, tmp_path / "b" / PROGRESS_DIR / "episodes.jsonl", 120, poll_s=0.02)
    assert 1 <= n_done < 8 and not (tmp_path / "b" / "eval.json").exists()
    p = _cli(tmp_path / "b", "--resume")
    assert p.wait(timeout=120) == 0, (tmp_path / "b.log").read_text()
    assert not (tmp_path / "b" / PROGRESS_DIR).exists() and sorted(x.name for x in (tmp_path / "b").iterdir()) == ["eval.json"]
    resumed = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert resumed["timing"]["resumed_episodes"] == n_done

    # The same settings uninterrupted, in this process.
    cfg = EvalConfig(tasks="reach-v3", episodes=8, max_steps=150)
    result, path = run_eval(RandomPolicy(0), cfg, tmp_path / "a", policy_name="random", progress=False)
    assert result.timing["resumed_episodes"] == 0 and [e["episode"] for e in result.episodes] == list(range(8))
    assert _content(tmp_path / "b" / "eval.json") == _content(path)
    assert len({tuple(e["start"]) for e in result.episodes}) == 8 and not any(e["error"] for e in result.episodes)


class _ChunkedExpert:
    """Expert actions as chunks of 3 (the same action repeated); returns NaN on one chosen call."""

    uses_images = True

    def __init__(self, nan_call: int | None) -> None:
        from vlatrim.sim.backends.metaworld.policies import ExpertPolicy

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
class _NaNTailExpert:
    """Expert chunks of 3 whose last action is NaN: with n_action_steps=2 it is never executed."""

    uses_images = False

    def __init__(self) -> None:
        from vlatrim.sim.backends.metaworld.policies import ExpertPolicy

        self.expert = ExpertPolicy()

    def reset(self, n):
        pass

    def predict(self, obs):
        a = np.repeat(self.expert.predict(obs), 3, axis=1)  # (B, 3, 4)
        a[:, 2] = np.nan
        return a


@pytest.mark.integration
def test_only_the_executed_part_of_a_chunk_must_be_finite():
    from vlatrim.sim.evaluate import evaluate

    cfg = EvalConfig(tasks="reach", episodes=2, workers=1, n_action_steps=2, max_steps=150)
    r, _ = evaluate(_NaNTailExpert(), cfg, "nan-tail", progress=False)
    assert [(e["success"], e["error"]) for e in r.episodes] == [(True, None), (True, None)]


@pytest.mark.integration
def test_slots_do_not_change_results():
    # Episodes are seeded by index: running two at once per worker (double-buffered slots) must give
    # every episode exactly the result it gets in plain lock-step.
    from vlatrim.sim.backends.metaworld.policies import ExpertPolicy
    from vlatrim.sim.evaluate import evaluate

    runs = {}
    for per_worker in (1, 2):
        cfg = EvalConfig(tasks="drawer-close,reach", episodes=3, workers=1, envs_per_worker=per_worker, max_steps=150)
        r, _ = evaluate(ExpertPolicy(), cfg, "expert", progress=False)
        assert r.timing["envs_per_worker_used"] == per_worker
        runs[per_worker] = [(e["task"], e["episode"], e["success"], e["steps"]) for e in r.episodes]
    assert runs[1] == runs[2] and all(e[2] for e in runs[1])


class _KillerExpert:
    """The expert, which SIGKILLs the (single) worker process on its ``kill_call``-th call."""

    uses_images = False

    def __init__(self, kill_call: int) -> None:
        from vlatrim.sim.backends.metaworld.policies import ExpertPolicy

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
    from vlatrim.utils.video import VideoReader

    with VideoReader(out / "videos" / "reach-v3_ep0.mp4") as r:  # mp4 is the default format
        frames, times = r.all_frames()
    assert frames.shape[1:] == (48, 48, 3) and len(frames) == data["episodes"][0]["steps"] + 1  # reset frame + one per step
    np.testing.assert_allclose(times, np.arange(len(frames)) / 30, atol=1e-9)
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["reach-v3_ep0.mp4"]


def test_store_keeps_clips_and_reruns_a_video_episode_whose_clip_is_lost(tmp_path):
    cfg = EvalConfig(tasks="reach", episodes=3, max_steps=20, video_episodes=2)
    frames = [np.full((10, 12, 3), 30 * i, np.uint8) for i in range(4)]
    store = EvalStore(tmp_path / "ev", cfg, "expert")
    for k in range(3):
        store.record(EpisodeResult("reach-v3", k, (5, k), True, 3), frames if k < 2 else None)
    store.close()
    clips = tmp_path / "ev" / PROGRESS_DIR / "videos"
    assert sorted(p.name for p in clips.iterdir()) == ["reach-v3_ep0.mp4", "reach-v3_ep1.mp4"]
    (clips / "reach-v3_ep1.mp4").unlink()
    store = EvalStore(tmp_path / "ev", cfg, "expert", resume=True)
    assert [r.episode for r in store.done] == [0, 2]  # episode 1 lost its clip: it runs again
    store.record(EpisodeResult("reach-v3", 1, (5, 1), True, 3), frames)
    r = _summarise(cfg, "expert", False, [*store.done, EpisodeResult("reach-v3", 1, (5, 1), True, 3)], 0.0, 0.0, 1.0, 9, 9, [1] * 9, 0.1, 1, resumed=2)
    path = store.finish(r)
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["eval.json", "videos"]
    assert sorted(p.name for p in (tmp_path / "ev" / "videos").iterdir()) == ["reach-v3_ep0.mp4", "reach-v3_ep1.mp4"]
    assert json.loads(path.read_text())["timing"]["resumed_episodes"] == 2
    from vlatrim.utils.video import VideoReader

    with VideoReader(tmp_path / "ev" / "videos" / "reach-v3_ep1.mp4") as v:
        got, _ = v.all_frames()
    assert got.shape == (4, 10, 12, 3) and np.abs(got.astype(int) - np.stack(frames)).max() <= 2  # flat grey frames: near exact


def test_a_run_that_fails_before_any_episode_leaves_nothing(tmp_path):
    class Pixels:
        uses_images = True

    with pytest.raises(VlatrimError, match="reads images"):
        run_eval(Pixels(), EvalConfig(tasks="reach", episodes=1, render=False), tmp_path / "ev", "pixels", progress=False)
    assert not (tmp_path / "ev").exists()


def test_resume_with_every_episode_done_starts_no_worker():
    from vlatrim.sim.evaluate import evaluate
    from vlatrim.sim.policy import RandomPolicy

    cfg = EvalConfig(tasks="reach,push", episodes=2, workers=2)
    done = [EpisodeResult(t, k, (1, k), k == 0, 10 + k) for t in ("push-v3", "reach-v3") for k in (1, 0)]
    r, videos = evaluate(RandomPolicy(0), cfg, "random", progress=False, done=done)
    assert [(e["task"], e["episode"]) for e in r.episodes] == [("reach-v3", 0), ("reach-v3", 1), ("push-v3", 0), ("push-v3", 1)]
    assert r.overall["successes"] == 2 and r.timing["resumed_episodes"] == 4 and r.timing["env_steps"] == 0 and not videos
    assert r.settings["workers_used"] == 2  # as an uninterrupted run would record it


def test_double_buffered_eval_gives_a_torch_policy_the_cores_the_workers_leave():
    import os

    import torch

    from vlatrim.sim.evaluate import _policy_threads

    before = torch.get_num_threads()
    try:
        assert _policy_threads(1, 1) is None and torch.get_num_threads() == before  # lock-step: untouched
        assert _policy_threads(2, 2) == before
        assert torch.get_num_threads() == max(1, min(before, os.cpu_count() - 2))
    finally:
        torch.set_num_threads(before)
