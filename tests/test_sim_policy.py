"""The policy contract: built-ins and load_policy's errors (checkpoints load through their policy family)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlatrim.errors import VlatrimError
from vlatrim.families import load_policy
from vlatrim.sim.backends.metaworld.policies import ExpertPolicy
from vlatrim.sim.policy import Policy, RandomPolicy, uses_images


def _obs(b: int, raw: np.ndarray | None = None, task: str = "reach-v3") -> dict:
    return {
        "image": np.zeros((b, 8, 8, 3), np.uint8),
        "state": np.zeros((b, 4), np.float32),
        "instruction": ["x"] * b,
        "task": [task] * b,
        "raw": np.zeros((b, 39), np.float32) if raw is None else raw,
    }


def test_builtins_resolve_and_satisfy_the_protocol():
    for name, cls in (("expert", ExpertPolicy), ("random", RandomPolicy)):
        p = load_policy(name)
        assert isinstance(p, cls) and isinstance(p, Policy) and not uses_images(p)


def test_expert_acts_on_raw_obs_and_clips():
    raw = np.zeros((2, 39), np.float32)
    raw[0, 36:39] = [0.1, -0.02, 0.0]  # goal 0.1 m away in x: reach's expert moves with gain 5
    raw[1, 36:39] = [1.0, -1.0, 0.5]  # far goal: the gain overshoots [-1, 1] and must be clipped
    a = load_policy("expert").predict(_obs(2, raw))
    assert a.shape == (2, 1, 4) and a.dtype == np.float32
    np.testing.assert_allclose(a[0, 0], [0.5, -0.1, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(a[1, 0], [1.0, -1.0, 1.0, 0.0])


def test_random_is_seeded_and_bounded():
    a = load_policy("random", seed=3).predict(_obs(5))
    b = load_policy("random", seed=3).predict(_obs(5))
    assert a.shape == (5, 1, 4) and np.abs(a).max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, load_policy("random", seed=4).predict(_obs(5)))


def test_load_policy_errors(tmp_path):
    with pytest.raises(VlatrimError, match=r"'nope' is neither a built-in \(expert, random\) nor a checkpoint directory"):
        load_policy("nope")
    with pytest.raises(VlatrimError, match="has no config.json"):
        load_policy(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(VlatrimError, match="is not a JSON object"):
        load_policy(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery-vla"}))
    with pytest.raises(VlatrimError, match=r"no policy family recognises .* \(config.json names 'mystery-vla'\); "
                                           r"registered families: vlatrim_vla, "):
        load_policy(str(tmp_path))
