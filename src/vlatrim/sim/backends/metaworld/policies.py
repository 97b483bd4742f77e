"""Meta-World's scripted experts as a vlatrim policy (the ``expert`` built-in of the ``metaworld`` backend)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from vlatrim.errors import VlatrimError
from vlatrim.sim.policy import PolicyIO


class ExpertPolicy:
    """Meta-World's scripted expert for each env's task, on the raw 39-d observation.

    Actions are clipped to [-1, 1] (some experts exceed it; the env would clip anyway), chunk length 1.

    Args:
        seed: unused (the experts are deterministic); accepted so every built-in is ``factory(seed)``.
    """

    uses_images = False
    io = PolicyIO(action_dim=4)  # reads obs["raw"] and obs["task"] only: no state, no camera

    def __init__(self, seed: int = 0) -> None:
        self._experts: dict[str, Any] = {}

    def reset(self, n: int) -> None:
        pass  # the scripted experts are stateless functions of the observation

    def _expert(self, task: str) -> Any:
        if task not in self._experts:
            from metaworld.policies import ENV_POLICY_MAP

            if task not in ENV_POLICY_MAP:
                raise VlatrimError(f"no scripted expert for task {task!r}")
            self._experts[task] = ENV_POLICY_MAP[task]()
        return self._experts[task]

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        raw = np.asarray(obs["raw"], dtype=np.float64)  # (B, 39)
        with warnings.catch_warnings():  # "Constant(s) may be too high": we clip right below
            warnings.simplefilter("ignore", UserWarning)
            acts = [self._expert(t).get_action(r) for t, r in zip(obs["task"], raw)]
        return np.clip(np.asarray(acts, dtype=np.float32), -1.0, 1.0)[:, None, :]  # (B, 1, 4)
