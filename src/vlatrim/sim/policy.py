"""The policy contract between models and closed-loop evaluation, policy I/O declarations, and loading.

A policy maps a batch of observations to a batch of action chunks::

    obs = {
        "images": {camera: uint8 (B, H, W, 3)},  # every rendered camera, upright ({} when none)
        "image": uint8 (B, H, W, 3) or None,     # the first camera of "images" (None without rendering)
        "state": float32 (B, state_dim) or None, # the backend's state (Meta-World: hand xyz + gripper)
        "instruction": list[str] (B),            # natural-language instruction of each env's task
        "task": list[str] (B),                   # task name, e.g. "drawer-open-v3"
        "raw": float32 (B, raw_dim),             # the simulator's full observation (Meta-World: 39)
        "step": int64 (B,),                      # steps so far in each env's episode (0: it just began)
        "episode": int64 (B,),                   # each env's episode index within its task
    }
    actions = policy.predict(obs)                # float (B, T, action_dim) in the env's action space

The evaluator executes each chunk open-loop for ``min(T, n_action_steps)`` steps before asking again,
and calls ``policy.reset(n)`` before a batch of ``n`` episodes starts. A policy may declare what it
reads and writes with ``io: PolicyIO``; the evaluator then refuses it before any episode when the
backend's action dim, state dim or cameras do not match, and renders the cameras it names. Without
``io``, a policy that ignores pixels sets ``uses_images = False`` so the evaluator may skip rendering.

Built-in policies belong to a backend (Meta-World: ``expert``, ``random``): ``builtin_policy(name)``.
Policies from checkpoints come from their policy family (``vlatrim.families.load_policy``, which also
resolves the built-ins): simulation never imports the packages that define models.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from vlatrim.errors import VlatrimError

if TYPE_CHECKING:
    from vlatrim.sim.backends.base import SimBackend


@runtime_checkable
class Policy(Protocol):
    """Batched observation -> action-chunk map (see the module docstring for shapes)."""

    def reset(self, n: int) -> None:
        """Called before a batch of ``n`` episodes starts (clear any per-episode state)."""

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        """Action chunks float (B, T, action_dim) for a batch of B observations."""


@dataclass(frozen=True)
class PolicyIO:
    """What a policy reads and predicts; a policy exposes one as ``policy.io``.

    The evaluator checks it against the backend before any episode starts and refuses a mismatch
    with one line naming both sides.

    Args:
        action_dim: length of each predicted action; must equal the backend's ``action_dim``.
        state_dim: length of ``obs["state"]`` the policy reads; None: it reads no state.
        cameras: cameras it reads, in order (rendered for it; ``obs["image"]`` is the first); each
            must be one of the backend's. Empty: it reads no image (nothing is rendered for it).
        image_size: side of the square images it was trained on; None: any (the run's image size).
            ``vlatrim eval`` renders at this size; a run at another size is refused.
        chunk_size: actions per ``predict`` call (T); the evaluator reads T from the returned array and
            refuses ``n_action_steps`` above this.
    """

    action_dim: int  # length of one action vector the policy predicts
    state_dim: int | None = None  # length of the state vector it reads; None: reads no state
    cameras: tuple[str, ...] = ()  # camera names it reads, in order; (): reads no image
    image_size: int | None = None  # square image side (px) it expects; None: any
    chunk_size: int = 1  # actions per predict call (T of the (B, T, action_dim) chunk)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))  # a list given by a caller: hashable still
        if not isinstance(self.action_dim, int) or self.action_dim < 1:
            raise VlatrimError(f"PolicyIO action_dim must be a positive int, got {self.action_dim!r}")
        if self.state_dim is not None and (not isinstance(self.state_dim, int) or self.state_dim < 1):
            raise VlatrimError(f"PolicyIO state_dim must be None or a positive int, got {self.state_dim!r}")
        if self.image_size is not None and self.image_size < 1:
            raise VlatrimError(f"PolicyIO image_size must be None or positive, got {self.image_size!r}")
        if self.chunk_size < 1:
            raise VlatrimError(f"PolicyIO chunk_size must be >= 1, got {self.chunk_size!r}")


def unknown_token_counts(policy: Any, instructions: list[str]) -> list[tuple[int, int]] | None:
    """(tokens, unknown tokens) per instruction from the policy's optional ``unknown_tokens(texts)``
    (a text policy whose vocabulary was cut reads unseen words as its unknown token); None when the
    policy does not report it."""
    fn = getattr(policy, "unknown_tokens", None)
    return None if fn is None else [(int(t), int(u)) for t, u in fn(instructions)]


def policy_io(policy: Any) -> PolicyIO | None:
    """The policy's declared ``io`` (None if it declares none)."""
    io = getattr(policy, "io", None)
    if io is not None and not isinstance(io, PolicyIO):
        raise TypeError(f"{type(policy).__name__}.io must be a PolicyIO, got {type(io).__name__}")
    return io


def uses_images(policy: Policy) -> bool:
    """Whether ``policy`` reads images: its ``io.cameras`` when it declares ``io``, else its
    ``uses_images`` attribute (default true)."""
    io = policy_io(policy)
    if io is not None:
        return bool(io.cameras)
    return bool(getattr(policy, "uses_images", True))


def check_policy_io(policy: Any, backend: SimBackend) -> None:
    """Refuse a policy whose declared ``io`` does not fit ``backend`` (no ``io``: nothing to check).

    Raises:
        VlatrimError: one line naming the policy's and the backend's side of the first mismatch.
    """
    io = policy_io(policy)
    if io is None:
        return
    b = backend.name
    if io.action_dim != backend.action_dim:
        raise VlatrimError(f"policy predicts {io.action_dim}-d actions; backend {b} takes {backend.action_dim}-d")
    if io.state_dim is not None and io.state_dim != backend.state_dim:
        has = f"gives a {backend.state_dim}-d state" if backend.state_dim is not None else "gives no state"
        raise VlatrimError(f"policy reads a {io.state_dim}-d state; backend {b} {has}")
    missing = [c for c in io.cameras if c not in backend.cameras]
    if missing:
        has = f"has cameras {', '.join(backend.cameras)}" if backend.cameras else "renders no camera"
        raise VlatrimError(f"policy reads camera {missing[0]!r}; backend {b} {has}")


class RandomPolicy:
    """Uniform random actions in [-1, 1]^action_dim, a floor for success rates (any backend).

    With ``obs["episode"]`` (the evaluator passes it) the action of each env is drawn from a generator
    seeded by (seed, task, episode, step), so an episode's actions do not depend on which worker ran
    it, on the other episodes in the batch, or on a resume. Without it, one seeded stream is used.

    Args:
        seed: the run seed.
        action_dim: length of each action (Meta-World: 4).
    """

    uses_images = False

    def __init__(self, seed: int = 0, action_dim: int = 4) -> None:
        self.seed, self.action_dim = seed, action_dim
        self.io = PolicyIO(action_dim=action_dim)  # reads neither state nor images
        self._rng = np.random.default_rng(seed)

    def reset(self, n: int) -> None:
        pass

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        b = len(obs["task"]) if obs.get("task") is not None else len(obs["state"])
        if obs.get("episode") is None:
            return self._rng.uniform(-1.0, 1.0, size=(b, 1, self.action_dim)).astype(np.float32)  # (B, 1, A)
        out = np.empty((b, 1, self.action_dim), np.float32)
        for i, (task, ep, step) in enumerate(zip(obs["task"], obs["episode"], obs["step"])):
            key = [self.seed, zlib.crc32(task.encode()), int(ep), int(step)]  # stable across processes
            out[i, 0] = np.random.default_rng(key).uniform(-1.0, 1.0, size=self.action_dim)
        return out  # (B, 1, A)


def __getattr__(name: str) -> Any:
    # The scripted expert moved to the Meta-World backend; imported lazily (it imports this module).
    if name == "ExpertPolicy":
        from vlatrim.sim.backends.metaworld.policies import ExpertPolicy

        return ExpertPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def builtin_policy(spec: str, seed: int = 0, backend: str | SimBackend = "metaworld") -> Policy | None:
    """The backend's built-in policy called ``spec`` (seeded with ``seed``), or None when it has none."""
    from vlatrim.sim.backends import get_backend

    builtins = get_backend(backend).policies()
    return builtins[spec](seed) if spec in builtins else None


def builtin_names(backend: str | SimBackend = "metaworld") -> list[str]:
    """Names of the backend's built-in policies."""
    from vlatrim.sim.backends import get_backend

    return sorted(get_backend(backend).policies())
