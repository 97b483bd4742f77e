"""Simulator backends as plug-ins: the registry, a backend defined here running through ``run_eval``,
policies refused for mismatched I/O before any episode, and no import of ``vlatrim.sim`` from ``vlatrim.data``.

The ``point2d`` backend below is pure numpy: a point starts at x = -0.1 * episode and moves 0.1 per
unit of action; it succeeds within 0.05 of its task's goal. The greedy policy reaches the ``near``
goal (x = 0.5) in exactly 5 + episode steps; the ``far`` goal (x = 5) is out of reach in 20 steps.
"""

from __future__ import annotations

import ast
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from vlatrim.errors import VlatrimError
from vlatrim.families import load_policy
from vlatrim.sim.backends import SIM_BACKENDS, EnvSpec, GymnasiumEnv, SimBackend, Step, get_backend
from vlatrim.sim.evaluate import EvalConfig, run_eval
from vlatrim.sim.policy import PolicyIO

GOALS = {"near": 0.5, "far": 5.0}


class PointEnv:
    """A 2-d point; ``raw`` is (x, y, goal x, goal y), ``state`` (x, y); cameras are flat grey frames."""

    def __init__(self, task: str, spec: EnvSpec) -> None:
        self.goal = np.array([GOALS[task], 0.0], np.float32)
        self.spec, self.steps, self.capture = spec, 0, spec.render
        self.pos = np.zeros(2, np.float32)

    def _step(self, success: bool) -> Step:
        images = {}
        if self.capture and self.spec.render:  # camera k: a frame of grey level 10 * (k + 1) + steps
            images = {c: np.full((self.spec.image_size,) * 2 + (3,), 10 * (PointBackend.cameras.index(c) + 1) + self.steps, np.uint8)
                      for c in self.spec.cameras}
        return Step(raw=np.concatenate([self.pos, self.goal]), state=self.pos.copy(), images=images, success=success)

    def reset(self, start: tuple[int, ...]) -> Step:
        _, _, episode = start  # the base class's default start: (split, seed, episode)
        self.pos, self.steps = np.array([-0.1 * episode, 0.0], np.float32), 0
        return self._step(False)

    def step(self, action: np.ndarray) -> Step:
        self.pos = self.pos + 0.1 * np.clip(np.asarray(action, np.float32), -1, 1)
        self.steps += 1
        return self._step(bool(np.linalg.norm(self.pos - self.goal) < 0.05))

    def close(self) -> None:
        pass


@SIM_BACKENDS.register("point2d")
class PointBackend(SimBackend):
    name = "point2d"
    action_dim = 2
    state_dim = 2
    cameras = ("top", "side")
    max_steps = 20

    def task_names(self) -> tuple[str, ...]:
        return tuple(GOALS)

    def task_groups(self) -> dict[str, tuple[str, ...]]:
        return {"all": tuple(GOALS)}

    def instruction(self, task: str) -> str:
        return f"move to the {task} goal"

    def make_env(self, task: str, spec: EnvSpec) -> PointEnv:
        return PointEnv(task, spec)


class Greedy:
    """Moves straight to the goal read from ``raw``; records what it was given."""

    def __init__(self, io: PolicyIO) -> None:
        self.io, self.calls, self.resets, self.seen = io, 0, [], []

    def reset(self, n: int) -> None:
        self.resets.append(n)

    def predict(self, obs: dict) -> np.ndarray:
        self.calls += 1
        self.seen.append(obs)
        raw = obs["raw"]  # (B, 4)
        a = np.clip(10.0 * (raw[:, 2:] - raw[:, :2]), -1.0, 1.0)  # (B, 2)
        return a[:, None, :]  # (B, 1, 2)


class PointGym:
    """The point of ``PointEnv`` as a gymnasium env, with a pit at x > 0.25 in task ``pit`` that ends the
    episode without success (``terminated``); the start position comes from the reset seed."""

    def __init__(self, task: str) -> None:
        import gymnasium

        self.observation_space = gymnasium.spaces.Box(-10.0, 10.0, (4,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.task, self.goal = task, np.array([GOALS["near"], 0.0], np.float32)
        self.seeds: list[int] = []

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.seeds.append(seed)
        self.pos = np.array([-0.1 * (seed % 3), 0.0], np.float32)  # the start decides the seed, the seed the position
        return np.concatenate([self.pos, self.goal]), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.pos = self.pos + 0.1 * np.clip(np.asarray(action, np.float32), -1, 1)
        success = bool(np.linalg.norm(self.pos - self.goal) < 0.05)
        fell = self.task == "pit" and bool(self.pos[0] > 0.25)
        return np.concatenate([self.pos, self.goal]), float(success), success or fell, False, {"is_success": success}

    def close(self) -> None:
        pass


@SIM_BACKENDS.register("point2d-gym")
class PointGymBackend(SimBackend):
    name = "point2d-gym"
    action_dim = 2
    state_dim = 2
    max_steps = 20

    def task_names(self) -> tuple[str, ...]:
        return ("near", "pit")

    def instruction(self, task: str) -> str:
        return f"reach the goal ({task})"

    def make_env(self, task: str, spec: EnvSpec) -> GymnasiumEnv:
        return GymnasiumEnv(PointGym(task), spec, observe=lambda obs: (obs, obs[:2]))


def test_a_gymnasium_env_runs_through_the_adapter(tmp_path):
    from vlatrim.sim.evaluate import evaluate

    r, videos = evaluate(Greedy(PolicyIO(action_dim=2, state_dim=2)), EvalConfig(tasks="near,pit", episodes=3),
                         "greedy", progress=False, backend="point2d-gym")
    eps = [(e["task"], e["success"], e["steps"], e["error"]) for e in r.episodes]
    # Episode k's start (1, 0, k) seeds reset with 1835504127, 1501029259, 2011233431: seed % 3 = 0, 1, 2 puts
    # the point at x = 0, -0.1, -0.2. The goal takes 5, 6, 7 steps; the pit ends an episode as a failure as
    # soon as x passes 0.25 (3, 4, 5 steps), before the goal.
    env = GymnasiumEnv(PointGym("near"), EnvSpec())
    for k in range(3):
        env.reset(get_backend("point2d-gym").episode_start("eval", 0, k))
    assert env.env.seeds == [1835504127, 1501029259, 2011233431]
    assert eps == [("near", True, 5, None), ("near", True, 6, None), ("near", True, 7, None),
                   ("pit", False, 3, None), ("pit", False, 4, None), ("pit", False, 5, None)]
    assert r.per_task["near"]["successes"] == 3 and r.per_task["pit"]["successes"] == 0 and not videos


def test_registry_rejects_duplicates_and_unnamed_backends():
    assert "metaworld" in SIM_BACKENDS and "point2d" in SIM_BACKENDS
    with pytest.raises(ValueError, match="simulator backend 'point2d' is already registered"):
        SIM_BACKENDS.register("point2d")(PointBackend)
    with pytest.raises(TypeError, match="must set a class attribute 'name'"):
        type("Nameless", (SimBackend,), {"action_dim": 2, "max_steps": 5})
    with pytest.raises(TypeError, match="must set 'action_dim' to a positive int"):
        type("NoActions", (SimBackend,), {"name": "no-actions", "max_steps": 5})
    with pytest.raises(VlatrimError, match="unknown simulator backend 'gazebo'; valid: metaworld, point2d, point2d-gym"):
        get_backend("gazebo")


def test_backend_declarations():
    mw, pt = get_backend("metaworld"), get_backend("point2d")
    assert (mw.action_dim, mw.state_dim, mw.max_steps, mw.default_camera) == (4, 4, 500, "corner")
    assert mw.parse_tasks("mt10")[:2] == ["reach-v3", "push-v3"] and mw.instruction("drawer-open") == "pull the drawer open"
    assert sorted(mw.policies()) == ["expert", "random"] and sorted(pt.policies()) == ["random"]
    assert pt.parse_tasks("far,all") == ["far", "near"] and pt.episode_start("eval", 3, 7) == (1, 3, 7)
    with pytest.raises(VlatrimError, match=r"unknown task 'mid' for backend point2d; valid: near, far \(or the groups all\)"):
        pt.parse_tasks("near,mid")
    assert load_policy("random", seed=1, backend="point2d").predict(
        {"task": ["near"], "episode": np.array([0]), "step": np.array([0])}).shape == (1, 1, 2)
    with pytest.raises(VlatrimError, match=r"'expert' is neither a built-in \(random\) nor a checkpoint directory"):
        load_policy("expert", backend="point2d")


def test_a_backend_defined_here_runs_through_run_eval(tmp_path):
    policy = Greedy(PolicyIO(action_dim=2, state_dim=2))
    cfg = EvalConfig(tasks="near,far", episodes=3, workers=1, envs_per_worker=2)
    result, path = run_eval(policy, cfg, tmp_path / "ev", policy_name="greedy", progress=False, backend="point2d")
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(data)) and sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["eval.json"]
    s = data["settings"]
    assert (s["backend"], s["tasks"], s["max_steps"], s["camera"], s["cameras"], s["render"]) == ("point2d", ["near", "far"], 20, "top", [], False)
    near, far = data["per_task"]["near"], data["per_task"]["far"]
    assert (near["successes"], near["episodes"], near["mean_steps"], near["instruction"]) == (3, 3, 6.0, "move to the near goal")
    assert (far["successes"], far["episodes"], far["mean_steps"], far["mean_steps_success"]) == (0, 3, 20.0, None)
    assert data["overall"]["successes"] == 3 and data["overall"]["episodes"] == 6 and data["overall"]["mean_success"] == 0.5
    assert [(e["task"], e["episode"], e["start"], e["success"], e["steps"], e["error"]) for e in data["episodes"]] == [
        ("near", 0, [1, 0, 0], True, 5, None), ("near", 1, [1, 0, 1], True, 6, None), ("near", 2, [1, 0, 2], True, 7, None),
        ("far", 0, [1, 0, 0], False, 20, None), ("far", 1, [1, 0, 1], False, 20, None), ("far", 2, [1, 0, 2], False, 20, None)]
    # Every step of every episode was asked for once (5 + 6 + 7 + 3 x 20); the observation keeps its keys.
    assert sum(len(o["task"]) for o in policy.seen) == 78 and policy.resets == [2]
    obs = policy.seen[0]
    assert set(obs) == {"images", "image", "state", "raw", "instruction", "task", "step", "episode"}
    assert obs["images"] == {} and obs["image"] is None and obs["instruction"][0] == "move to the near goal"
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (len(obs["task"]), 2) and obs["raw"].shape[1:] == (4,)


def test_policy_cameras_are_rendered_in_order_and_videos_use_the_first(tmp_path):
    policy = Greedy(PolicyIO(action_dim=2, state_dim=2, cameras=("side", "top")))
    cfg = EvalConfig(tasks="near", episodes=1, workers=1, image_size=8, video_episodes=1, video_format="gif")
    result, path = run_eval(policy, cfg, tmp_path / "ev", policy_name="greedy-pixels", progress=False, backend="point2d")
    assert result.settings["cameras"] == ["side", "top"] and result.settings["render"] is True
    obs = policy.seen[0]
    assert list(obs["images"]) == ["side", "top"] and obs["image"] is obs["images"]["side"]
    assert obs["image"].shape == (1, 8, 8, 3) and obs["image"].dtype == np.uint8
    assert int(obs["images"]["side"][0, 0, 0, 0]) == 20 and int(obs["images"]["top"][0, 0, 0, 0]) == 10  # reset frames
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "ev" / "videos" / "near_ep0.gif")
    assert frames.shape[0] == 6 and [int(f[0, 0, 0]) for f in frames] == [20, 21, 22, 23, 24, 25]  # side camera, reset + 5 steps


class Counting:
    """A policy that must never run: counts resets and predictions."""

    def __init__(self, io: PolicyIO | None, uses_images: bool = False) -> None:
        self.io, self.uses_images, self.calls = io, uses_images, 0

    def reset(self, n: int) -> None:
        self.calls += 1

    def predict(self, obs: dict) -> np.ndarray:
        self.calls += 1
        raise AssertionError("no episode may run")


@pytest.mark.parametrize("backend, io, message", [
    ("point2d", PolicyIO(action_dim=7, state_dim=2), "policy predicts 7-d actions; backend point2d takes 2-d"),
    ("metaworld", PolicyIO(action_dim=7), "policy predicts 7-d actions; backend metaworld takes 4-d"),
    ("point2d", PolicyIO(action_dim=2, state_dim=3), "policy reads a 3-d state; backend point2d gives a 2-d state"),
    ("point2d", PolicyIO(action_dim=2, cameras=("top", "wrist")), "policy reads camera 'wrist'; backend point2d has cameras top, side"),
    ("metaworld", PolicyIO(action_dim=4, state_dim=4, cameras=("wrist",)),
     "policy reads camera 'wrist'; backend metaworld has cameras corner, corner2, corner3, corner4, topview, behindGripper, gripperPOV"),
])
def test_mismatched_policy_is_refused_before_any_episode(tmp_path, backend, io, message):
    policy = Counting(io)
    cfg = EvalConfig(tasks="near" if backend == "point2d" else "reach", episodes=2, workers=1)
    with pytest.raises(VlatrimError, match=f"^{message}$"):
        run_eval(policy, cfg, tmp_path / "ev", policy_name="mismatched", progress=False, backend=backend)
    assert policy.calls == 0 and not mp.active_children() and not (tmp_path / "ev").exists()


def test_a_policy_reading_images_is_refused_by_a_backend_without_cameras(tmp_path):
    class Blind(PointBackend):
        name = "point2d-blind"
        cameras = ()

    policy = Counting(None, uses_images=True)  # no io: uses_images says it reads pixels
    with pytest.raises(VlatrimError, match="^the policy reads images; backend point2d-blind renders no camera$"):
        run_eval(policy, EvalConfig(tasks="near", episodes=1), tmp_path / "ev", progress=False, backend=Blind())
    assert policy.calls == 0 and not (tmp_path / "ev").exists()


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (inside functions too), as written."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package vlatrim.data
                base = ".".join(["vlatrim", "data"][: 2 - (node.level - 1)])
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__"):
            names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return names


def test_data_imports_nothing_from_sim():
    data = Path(__file__).parents[1] / "src" / "vlatrim" / "data"
    files = sorted(data.rglob("*.py"))
    assert files and data / "lerobot.py" in files
    bad = {f.name: sorted(m for m in _imported_modules(f) if m == "vlatrim.sim" or m.startswith("vlatrim.sim."))
           for f in files}
    assert {f: m for f, m in bad.items() if m} == {}
    # and the check sees imports inside functions
    probe = data.parent / "sim" / "backends" / "metaworld" / "demos.py"
    assert "vlatrim.sim.backends.metaworld.env" in _imported_modules(probe)
