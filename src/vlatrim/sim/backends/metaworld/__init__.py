"""The Meta-World backend (``metaworld``): 50 v3 tasks of a Sawyer arm, MuJoCo, rendered offscreen.

- Tasks: the 50 Meta-World v3 names (``reach-v3``; ``-v3`` may be left out), ``mt10``, ``mt50`` and
  the difficulty groups ``easy`` / ``medium`` / ``hard`` / ``very_hard`` (``tasks``); one instruction
  per task (``instructions``).
- Observation: ``state`` float32 (4,) hand xyz + gripper opening; ``raw`` float32 (39,), Meta-World's
  own observation; images from any of the model's cameras (default ``corner``, turned upright).
- Actions: float (4,) dx, dy, dz, gripper effort, clipped to [-1, 1]; at most 500 steps an episode;
  success is Meta-World's ``info["success"]``.
- Starts: ``env.episode_start`` (seeded, demonstration and evaluation pools disjoint).
- Built-in policies: ``expert`` (the scripted experts) and ``random``.
- Demonstrations: ``demos.generate_demos`` (scripted-expert rollouts into a LeRobot v3 dataset).

Importing this package is cheap: Meta-World and MuJoCo are imported when an env is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vlatrim.sim.backends.base import SIM_BACKENDS, EnvSpec, SimBackend, SimEnv
from vlatrim.sim.backends.metaworld.instructions import instruction_for
from vlatrim.sim.backends.metaworld.tasks import ALL_TASKS, GROUPS, canonical_task, parse_tasks

if TYPE_CHECKING:
    from vlatrim.sim.policy import Policy

# Per worker process: the metaworld.MT1 start tables shared by its envs (each costs ~0.5 s to build).
_START_CACHE: dict = {}


@SIM_BACKENDS.register("metaworld")
class MetaWorldBackend(SimBackend):
    """Meta-World v3 (``metaworld`` package): see the module docstring for what it declares."""

    name = "metaworld"
    action_dim = 4
    state_dim = 4
    # The cameras of Meta-World's Sawyer scenes; "corner" (upright) is the datasets' camera.
    cameras = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
    max_steps = 500

    def task_names(self) -> tuple[str, ...]:
        return ALL_TASKS

    def task_groups(self) -> dict[str, tuple[str, ...]]:
        return GROUPS

    def canonical_task(self, name: str) -> str:
        return canonical_task(name)

    def parse_tasks(self, spec: str | list[str] | tuple[str, ...]) -> list[str]:
        return parse_tasks(spec)

    def instruction(self, task: str) -> str:
        return instruction_for(task)

    def episode_start(self, split: str, seed: int, episode: int) -> tuple[int, int]:
        from vlatrim.sim.backends.metaworld.env import episode_start

        return episode_start(split, seed, episode)

    def make_env(self, task: str, spec: EnvSpec) -> SimEnv:
        from vlatrim.sim.backends.metaworld.env import MetaWorldEnv

        return MetaWorldEnv(task, image_size=spec.image_size, camera=spec.cameras, render=spec.render and bool(spec.cameras),
                            start_cache=_START_CACHE)

    def prepare_render(self) -> None:
        from vlatrim.sim.render import ensure_gl_backend

        ensure_gl_backend()  # before MuJoCo is imported anywhere: EGL, else OSMesa (workers inherit it)

    def policies(self) -> dict[str, Callable[[int], Policy]]:
        from vlatrim.sim.backends.metaworld.policies import ExpertPolicy

        return {"expert": ExpertPolicy, **super().policies()}
