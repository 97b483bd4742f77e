"""Rendering backend choice, cheap render settings, and the Meta-World env wrapper."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from vlatrim.errors import VlatrimError
from vlatrim.sim import render
from vlatrim.sim.backends.metaworld.env import STARTS_PER_SEED, episode_start


@pytest.fixture()
def fresh_gl(monkeypatch):
    # Pretend MuJoCo is not imported yet and nothing was probed, and keep os.environ changes local.
    monkeypatch.delitem(sys.modules, "mujoco", raising=False)
    monkeypatch.delenv(render._CHECKED_ENV, raising=False)
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    return monkeypatch


def test_gl_backend_falls_back_to_osmesa(fresh_gl):
    tried = []
    fresh_gl.setattr(render, "_probe", lambda b: tried.append(b) or (None if b == "osmesa" else "EGL init failed"))
    import os

    assert render.ensure_gl_backend() == "osmesa"
    assert tried == ["egl", "osmesa"]
    assert os.environ["MUJOCO_GL"] == "osmesa" and os.environ["PYOPENGL_PLATFORM"] == "osmesa"
    assert render.ensure_gl_backend() == "osmesa" and tried == ["egl", "osmesa"]  # cached, no re-probe


def test_gl_backend_error_is_one_line_naming_both(fresh_gl):
    fresh_gl.setattr(render, "_probe", lambda b: f"no {b} library")
    with pytest.raises(VlatrimError) as e:
        render.ensure_gl_backend()
    msg = str(e.value)
    assert "egl: no egl library; osmesa: no osmesa library" in msg and "libosmesa6" in msg and "\n" not in msg


def test_episode_starts_are_distinct_and_split_apart():
    demo = [episode_start("demo", 0, e) for e in range(120)]
    assert len(set(demo)) == 120
    assert [i for _, i in demo[:3]] == [0, 1, 2] and demo[STARTS_PER_SEED][1] == 0
    assert len({s for s, _ in demo}) == 3  # 50 starts per MT1 seed
    evals = {s for s, _ in (episode_start("eval", 0, e) for e in range(120))}
    assert not evals & {s for s, _ in demo}
    assert episode_start("demo", 1, 0)[0] != demo[0][0]
    assert episode_start("demo", 0, 7) == demo[7]  # pure function of its arguments
    with pytest.raises(VlatrimError, match="unknown start split 'test'"):
        episode_start("test", 0, 0)


@pytest.mark.integration
def test_render_frame_cheap_settings_upright():
    import mujoco

    from vlatrim.sim.backends.metaworld.env import MetaWorldEnv

    render.ensure_gl_backend()
    with MetaWorldEnv("reach-v3", image_size=64) as env:
        step = env.reset(episode_start("eval", 0, 0))
        img = step.image
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 10
        assert env.unwrapped.model.vis.quality.offsamples == 0
        flags = env.renderer._renderer.scene.flags
        assert flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 0 and flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 0
        # The upright image is the raw corner render turned by 180 degrees.
        raw = env.renderer._renderer.render()
        np.testing.assert_array_equal(env.render(), raw[::-1, ::-1])
        np.testing.assert_array_equal(step.state, step.raw[:4])


@pytest.mark.integration
def test_env_is_deterministic_per_start_and_demo_eval_starts_differ():
    from vlatrim.sim.backends.metaworld.env import MetaWorldEnv
    from vlatrim.sim.backends.metaworld.policies import ExpertPolicy

    expert = ExpertPolicy()
    with MetaWorldEnv("drawer-open-v3", render=False) as env:
        def run(start):
            s, traj = env.reset(start), []
            for _ in range(200):
                a = expert.predict({"raw": s.raw[None], "task": [env.task], "state": s.state[None]})[0, 0]
                s = env.step(a)
                traj.append(s.raw)
                if s.success:
                    break
            return np.array(traj), s.success

        a, ok_a = run(episode_start("demo", 0, 3))
        b, ok_b = run(episode_start("demo", 0, 3))
        assert ok_a and ok_b
        np.testing.assert_array_equal(a, b)
        demo_objs = {tuple(np.round(env.reset(episode_start("demo", 0, e)).raw[4:7], 6)) for e in range(10)}
        eval_objs = {tuple(np.round(env.reset(episode_start("eval", 0, e)).raw[4:7], 6)) for e in range(10)}
        assert len(demo_objs) == 10 and len(eval_objs) == 10 and not demo_objs & eval_objs


def test_envs_sharing_a_start_cache_build_each_start_table_once():
    # Evaluation workers share one cache across their slots' envs: the same (task, seed) start table
    # must be built once and give both envs the same start.
    from vlatrim.sim.backends.metaworld.env import MetaWorldEnv, episode_start

    cache: dict = {}
    start = episode_start("eval", 0, 3)
    with MetaWorldEnv("reach", render=False, start_cache=cache) as a, \
            MetaWorldEnv("reach", render=False, start_cache=cache) as b:
        ra, rb = a.reset(start).raw, b.reset(start).raw
        table = cache[("reach-v3", start[0])]
        b.reset(episode_start("eval", 0, 4))  # same seed block: no new table
    assert list(cache) == [("reach-v3", start[0])] and cache[("reach-v3", start[0])] is table
    np.testing.assert_array_equal(ra, rb)


@pytest.mark.filterwarnings("ignore:Constant")
def test_direct_env_factory_matches_gym_make():
    # make_mt1_env skips the start table gym.make builds; the env must behave exactly the same.
    import gymnasium as gym
    from metaworld import MT1
    from metaworld.policies import ENV_POLICY_MAP

    from vlatrim.sim.backends.metaworld.env import make_mt1_env

    def rollout(env, task):
        env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
        env.unwrapped.set_task(MT1(task, seed=7).train_tasks[3])
        obs, _ = env.reset(seed=7)
        out, policy = [obs], ENV_POLICY_MAP[task]()
        for _ in range(25):
            obs, *_ = env.step(np.clip(policy.get_action(obs), -1, 1))
            out.append(obs)
        env.close()
        return np.array(out)

    for task in ("reach-v3", "drawer-open-v3"):
        ref = rollout(gym.make("Meta-World/MT1", env_name=task, seed=0, disable_env_checker=True), task)
        np.testing.assert_array_equal(rollout(make_mt1_env(task), task), ref)
