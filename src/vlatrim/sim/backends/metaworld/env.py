"""One Meta-World task as vlatrim sees it: seeded start configurations, 4-d state, cheap images.

Meta-World's gotchas (metaworld 3.1.1) handled here:
- ``gym.make("Meta-World/MT1", ...)`` resamples among 50 fixed starts on every reset in a sequence
  fixed by its seed, so parallel workers would repeat each other. Resampling is switched off and the
  start is set explicitly: start ``(start_seed, i)`` is ``metaworld.MT1(task, seed=start_seed)
  .train_tasks[i]``. ``episode_start`` derives ``start_seed`` from (split, run seed, episode // 50)
  through a SeedSequence, so demonstration starts ("demo") and evaluation starts ("eval") come from
  different MT1 seeds and do not coincide.
- The state is hand xyz + gripper opening, the first 4 entries of the raw 39-d observation.
- The ``corner`` camera renders upside down: images are rotated 180 degrees.
- Episodes end at ``max_steps`` (at most Meta-World's 500; stepping past it raises in Meta-World).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlatrim.errors import VlatrimError
from vlatrim.sim.backends.base import SPLITS, Step
from vlatrim.sim.backends.metaworld.tasks import canonical_task

MAX_PATH_LENGTH = 500  # Meta-World's hard limit per episode
STARTS_PER_SEED = 50  # metaworld.MT1(...).train_tasks holds 50 start configurations


def episode_start(split: str, seed: int, episode: int) -> tuple[int, int]:
    """The start configuration ``(start_seed, i)`` of episode ``episode`` of a run seeded ``seed``.

    Consecutive episodes walk through the 50 starts of one MT1 seed before moving to the next, so a
    run of N episodes has N distinct starts; ``split`` separates demonstration and evaluation pools.
    """
    if split not in SPLITS:
        raise VlatrimError(f"unknown start split {split!r}; valid: {', '.join(SPLITS)}")
    if seed < 0 or episode < 0:
        raise VlatrimError(f"seed and episode must be >= 0, got {seed} and {episode}")
    block, i = divmod(episode, STARTS_PER_SEED)
    ss = np.random.SeedSequence([SPLITS[split], seed, block])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF), i


def make_mt1_env(task: str) -> Any:
    """Meta-World's single-task env with the wrappers of ``gym.make("Meta-World/MT1", seed=0)``.

    ``gym.make`` first builds a ``metaworld.MT1`` start table (~0.5 s of the ~0.6 s an env takes),
    which vlatrim never uses: every reset sets its start explicitly. Meta-World's own env factory
    with an empty task list builds the same wrapped env without it (tests/test_sim_env.py checks the
    trajectories are identical); releases without that factory fall back to ``gym.make``.
    """
    import metaworld  # registers the Meta-World/* gym ids

    factory = getattr(metaworld, "_init_each_env", None)
    classes = getattr(metaworld, "ALL_V3_ENVIRONMENTS", {})
    if factory is not None and task in classes:
        return factory(env_cls=classes[task], tasks=[], seed=0, num_tasks=1)
    import gymnasium as gym

    return gym.make("Meta-World/MT1", env_name=task, seed=0, disable_env_checker=True)


class MetaWorldEnv:
    """A single-task Meta-World environment with explicit starts and an optional offscreen camera.

    Args:
        task: Meta-World v3 task name.
        image_size: side of the square camera image in pixels.
        camera: Meta-World camera name, or several (one renderer each; ``Step.images`` keeps this
            order, ``Step.image`` is the first).
        render: create renderers (False: ``Step.images`` is empty, no GL needed).
        start_cache: a dict shared by several envs of one process to hold the ``metaworld.MT1``
            objects that define start configurations (building one costs ~0.5 s); default: its own.
    """

    def __init__(self, task: str, image_size: int = 96, camera: str | Sequence[str] = "corner", render: bool = True,
                 start_cache: dict[tuple[str, int], Any] | None = None) -> None:
        self.task = canonical_task(task)
        if image_size < 8:
            raise VlatrimError(f"image size must be >= 8 px, got {image_size}")
        self.cameras = (camera,) if isinstance(camera, str) else tuple(camera)
        self.image_size, self.camera = int(image_size), self.cameras[0] if self.cameras else None
        self._gym = make_mt1_env(self.task)
        self._gym.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
        self.unwrapped = self._gym.unwrapped
        self.fps = int(self.unwrapped.metadata.get("render_fps", 80))
        self._benchmarks: dict[tuple[str, int], Any] = {} if start_cache is None else start_cache
        self.renderers: dict[str, Any] = {}
        try:
            if render:
                from vlatrim.sim.render import OffscreenRenderer

                for cam in self.cameras:
                    self.renderers[cam] = OffscreenRenderer(
                        self.unwrapped.model, self.image_size, self.image_size, cam, rotate180=cam == "corner"
                    )
        except BaseException:  # an unknown camera: free what was built
            self.close()
            raise
        self.capture = render  # render a frame per step; turn off to skip frames a caller ignores
        self.steps = 0
        self.start: tuple[int, int] | None = None

    def _task_for(self, start_seed: int, i: int) -> Any:
        import metaworld

        bench = self._benchmarks.get((self.task, start_seed))
        if bench is None:
            if len(self._benchmarks) >= 8:  # MT1 objects are small, but a long run visits many seeds
                self._benchmarks.pop(next(iter(self._benchmarks)))
            bench = self._benchmarks[(self.task, start_seed)] = metaworld.MT1(self.task, seed=start_seed)
        return bench.train_tasks[i]

    def _observe(self, raw: np.ndarray, success: bool) -> Step:
        raw = np.asarray(raw, dtype=np.float32)  # (39,)
        images = {cam: r.render(self.unwrapped.data) for cam, r in self.renderers.items()} if self.capture else {}
        return Step(raw=raw, state=raw[:4].copy(), images=images, success=success)  # state (4,), images (H, W, 3)

    def reset(self, start: tuple[int, int]) -> Step:
        """Start an episode from start configuration ``start = (start_seed, i)`` (see episode_start)."""
        start_seed, i = start
        if not 0 <= i < STARTS_PER_SEED:
            raise VlatrimError(f"start index must be in 0..{STARTS_PER_SEED - 1}, got {i}")
        self.unwrapped.set_task(self._task_for(start_seed, i))
        raw, _ = self._gym.reset(seed=start_seed)
        self.steps, self.start = 0, (start_seed, i)
        return self._observe(raw, False)

    def step(self, action: np.ndarray) -> Step:
        """Apply one action (clipped to [-1, 1]); raises past Meta-World's 500-step limit."""
        if self.steps >= MAX_PATH_LENGTH:
            raise VlatrimError(f"episode already has {MAX_PATH_LENGTH} steps (Meta-World's limit); reset first")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        raw, _, _, _, info = self._gym.step(action)
        self.steps += 1
        return self._observe(raw, bool(info["success"]))

    @property
    def renderer(self) -> Any:
        """The first camera's renderer (None with ``render=False``)."""
        return next(iter(self.renderers.values()), None)

    def render(self) -> np.ndarray:
        """Image of the current state from the first camera (uint8 (H, W, 3)); needs ``render=True``."""
        if not self.renderers:
            raise VlatrimError("this env was created with render=False")
        return self.renderer.render(self.unwrapped.data)

    def close(self) -> None:
        for r in self.renderers.values():
            r.close()
        self.renderers = {}
        self._gym.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
