"""What a simulator backend is: the contract between a simulator and closed-loop evaluation.

A backend is a class registered by name in ``SIM_BACKENDS``, one module (or package) under
``vlatrim/sim/backends/``; importing ``vlatrim.sim.backends`` imports every module there, so adding a
backend touches no other file. It declares, without building an environment (the main process never
needs the simulator itself):

- the tasks (``task_names``, ``task_groups``, ``parse_tasks`` for comma-separated specs) and one
  natural-language instruction per task (``instruction``);
- the observation a policy receives: ``cameras`` it can render (the first is the default),
  ``state_dim`` of the proprioceptive state (None: no state);
- ``action_dim`` and ``max_steps`` (the hard step limit of one episode);
- seeded episode starts (``episode_start``) and the environment factory (``make_env``), whose envs
  report success (and termination without success) on every ``Step``; a simulator with gymnasium's
  API is wrapped by ``GymnasiumEnv``;
- its built-in policies (``policies``: name -> factory(seed)).

Backends are pickled into the evaluator's worker processes (spawned), so keep their instances small
and picklable; per-process caches belong in module globals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from vlatrim.errors import VlatrimError
from vlatrim.registry import Registry

if TYPE_CHECKING:
    from vlatrim.sim.policy import Policy

SPLITS: dict[str, int] = {"demo": 0, "eval": 1}  # start pools: demonstrations and evaluation never share a start


@dataclass
class Step:
    """One observation of an environment, after a reset or an action.

    Args:
        raw: float32 (raw_dim,): the simulator's full observation (scripted policies read it).
        state: float32 (state_dim,): the proprioceptive state a policy receives, or None.
        images: camera name -> uint8 (H, W, 3) upright frame; empty while capture is off.
        success: the backend's success signal after this step (False after a reset).
        terminated: the episode is over without success (the env cannot go on); the evaluator
            records a failure at this step.
    """

    raw: np.ndarray
    state: np.ndarray | None
    images: dict[str, np.ndarray] = field(default_factory=dict)
    success: bool = False
    terminated: bool = False

    @property
    def image(self) -> np.ndarray | None:
        """The first camera's frame, uint8 (H, W, 3), or None when nothing was captured."""
        return next(iter(self.images.values()), None)


@dataclass(frozen=True)
class EnvSpec:
    """How the evaluator (or demo generation) wants an environment built.

    Args:
        image_size: side of the square camera images in pixels.
        cameras: cameras to render, in order (the first is ``obs["image"]``); empty: none.
        render: create renderers at all (False: no GL needed, ``Step.images`` stays empty).
    """

    image_size: int = 96
    cameras: tuple[str, ...] = ()
    render: bool = True


@runtime_checkable
class SimEnv(Protocol):
    """One task's environment, as ``SimBackend.make_env`` returns it.

    ``steps`` counts the actions since the last reset; ``capture`` switches per-step rendering (the
    evaluator turns it off for policies that read no images and records no video).
    """

    steps: int
    capture: bool

    def reset(self, start: tuple[int, ...]) -> Step:
        """Begin an episode from the start ``start`` (an ``episode_start`` value)."""

    def step(self, action: np.ndarray) -> Step:
        """Apply one action, float (action_dim,)."""

    def close(self) -> None:
        """Release the simulator and its renderers."""


class SimBackend:
    """Base class of simulator backends.

    Subclasses set the class attributes below and implement ``task_names``, ``instruction`` and
    ``make_env``; ``__init_subclass__`` refuses a subclass without a ``name`` or with an invalid
    declaration. Register with ``@SIM_BACKENDS.register("<name>")`` (the same name).

    Class attributes:
        name: the registry key (``vlatrim eval --backend NAME``).
        action_dim: length of one action vector.
        state_dim: length of the state vector a policy receives (None: the backend gives none).
        cameras: cameras the backend can render; the first is the default (empty: no images).
        max_steps: the hard step limit of one episode (``EvalConfig.max_steps`` defaults to it).
    """

    name: ClassVar[str]
    action_dim: ClassVar[int]
    state_dim: ClassVar[int | None] = None
    cameras: ClassVar[tuple[str, ...]] = ()
    max_steps: ClassVar[int]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.__dict__.get("name"), str) or not cls.__dict__["name"]:
            raise TypeError(f"simulator backend {cls.__name__} must set a class attribute 'name'")
        for attr in ("action_dim", "max_steps"):
            v = getattr(cls, attr, None)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TypeError(f"simulator backend {cls.__name__} must set '{attr}' to a positive int, got {v!r}")
        if cls.state_dim is not None and (not isinstance(cls.state_dim, int) or cls.state_dim < 1):
            raise TypeError(f"simulator backend {cls.__name__}: 'state_dim' must be None or a positive int, got {cls.state_dim!r}")
        if not isinstance(cls.cameras, tuple) or not all(isinstance(c, str) and c for c in cls.cameras):
            raise TypeError(f"simulator backend {cls.__name__}: 'cameras' must be a tuple of names, got {cls.cameras!r}")

    # ------------------------------------------------------------------------------------ tasks
    def task_names(self) -> tuple[str, ...]:
        """Every task of the backend, in its canonical order."""
        raise NotImplementedError

    def task_groups(self) -> dict[str, tuple[str, ...]]:
        """Named groups a task spec may use besides task names (e.g. ``mt10``); default none."""
        return {}

    def canonical_task(self, name: str) -> str:
        """One task name as the backend spells it; an unknown name raises ``VlatrimError``."""
        key = name.strip()
        if key in self.task_names():
            return key
        groups = f" (or the groups {', '.join(self.task_groups())})" if self.task_groups() else ""
        raise VlatrimError(f"unknown task {key!r} for backend {self.name}; valid: {', '.join(self.task_names())}{groups}")

    def parse_tasks(self, spec: str | Sequence[str]) -> list[str]:
        """Expand a task spec (comma-separated names and groups, or a list of such items) in order,
        without duplicates.

        Raises:
            VlatrimError: an empty spec or an unknown item (the message lists the valid ones).
        """
        items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
        items = [i.strip() for i in items if i.strip()]
        groups = self.task_groups()
        if not items:
            raise VlatrimError(f"empty task spec {spec!r}; give task names{' or one of ' + ', '.join(groups) if groups else ''}")
        out: list[str] = []
        for item in items:
            group = groups.get(item.lower().replace("-", "_"))
            for task in group if group is not None else (self.canonical_task(item),):
                if task not in out:
                    out.append(task)
        return out

    def instruction(self, task: str) -> str:
        """The natural-language instruction a policy is given for ``task``."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------- episodes
    def episode_start(self, split: str, seed: int, episode: int) -> tuple[int, ...]:
        """The start of episode ``episode`` of a run seeded ``seed``: a tuple of ints ``make_env``'s
        envs reset from (recorded in eval.json). ``split`` (``demo`` / ``eval``) keeps the start pools
        of demonstrations and evaluation apart. Default: ``(split index, seed, episode)``.
        """
        if split not in SPLITS:
            raise VlatrimError(f"unknown start split {split!r}; valid: {', '.join(SPLITS)}")
        if seed < 0 or episode < 0:
            raise VlatrimError(f"seed and episode must be >= 0, got {seed} and {episode}")
        return SPLITS[split], seed, episode

    def make_env(self, task: str, spec: EnvSpec) -> SimEnv:
        """A fresh environment for ``task`` (called in worker processes)."""
        raise NotImplementedError

    def prepare_render(self) -> None:
        """Called in the main process before environments that render are built (e.g. pick an
        OpenGL backend); default: nothing."""

    # --------------------------------------------------------------------------------- policies
    def policies(self) -> dict[str, Callable[[int], Policy]]:
        """Built-in policies: name -> factory(seed). Default: ``random`` (uniform in [-1, 1])."""
        return {"random": _RandomFactory(self.action_dim)}

    @property
    def default_camera(self) -> str | None:
        """The camera rendered when neither the settings nor the policy name one."""
        return self.cameras[0] if self.cameras else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class GymnasiumEnv:
    """A ``gymnasium.Env`` as a ``SimEnv``, for backends whose simulator speaks gymnasium's API.

    ``reset(start)`` calls ``env.reset(seed=...)`` with a seed derived from the start tuple (through a
    ``numpy.random.SeedSequence``), so the start alone decides the episode. After each
    ``env.step(action)``, success is ``info[success_key]``; ``terminated`` or ``truncated`` without
    success ends the episode as a failure (``Step.terminated``).

    Args:
        env: the environment; actions are float (action_dim,) as its action space takes them.
        spec: the evaluator's ``EnvSpec`` (cameras and image size handed to ``render``).
        observe: ``obs -> (raw, state)``: the full observation and the state a policy receives
            (None: none); default: ``raw = gymnasium.spaces.flatten(env.observation_space, obs)``,
            no state.
        render: ``(env, camera, image_size) -> uint8 (H, W, 3)``; None: the env renders nothing.
        success_key: the ``info`` key of the success flag (gymnasium-robotics' ``is_success``).
    """

    def __init__(self, env: Any, spec: EnvSpec,
                 observe: Callable[[Any], tuple[np.ndarray, np.ndarray | None]] | None = None,
                 render: Callable[[Any, str, int], np.ndarray] | None = None, success_key: str = "is_success") -> None:
        self.env, self.spec, self.success_key = env, spec, success_key
        self._observe_fn, self._render_fn = observe, render
        self.steps = 0
        self.capture = spec.render and render is not None

    def _observe(self, obs: Any, success: bool, terminated: bool) -> Step:
        if self._observe_fn is not None:
            raw, state = self._observe_fn(obs)
        else:
            import gymnasium

            raw, state = gymnasium.spaces.flatten(self.env.observation_space, obs), None
        images = {}
        if self.capture and self._render_fn is not None:
            images = {c: self._render_fn(self.env, c, self.spec.image_size) for c in self.spec.cameras}
        return Step(np.asarray(raw, np.float32), None if state is None else np.asarray(state, np.float32), images,
                    success, terminated and not success)

    def reset(self, start: tuple[int, ...]) -> Step:
        seed = int(np.random.SeedSequence([int(x) for x in start]).generate_state(1)[0] & 0x7FFFFFFF)
        obs, _ = self.env.reset(seed=seed)
        self.steps = 0
        return self._observe(obs, False, False)

    def step(self, action: np.ndarray) -> Step:
        obs, _, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        return self._observe(obs, bool(info.get(self.success_key, False)), bool(terminated or truncated))

    def close(self) -> None:
        self.env.close()


@dataclass(frozen=True)
class _RandomFactory:
    """factory(seed) -> RandomPolicy over ``action_dim`` (a picklable callable, unlike a lambda)."""

    action_dim: int

    def __call__(self, seed: int) -> Policy:
        from vlatrim.sim.policy import RandomPolicy

        return RandomPolicy(seed, action_dim=self.action_dim)


SIM_BACKENDS: Registry[type[SimBackend]] = Registry("simulator backend")
