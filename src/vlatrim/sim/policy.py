"""The policy contract between models and closed-loop evaluation, the built-in policies, and loading.

A policy maps a batch of observations to a batch of action chunks::

    obs = {
        "image": uint8 (B, H, W, 3),      # corner camera, upright
        "state": float32 (B, 4),          # hand xyz + gripper opening
        "instruction": list[str] (B),     # natural-language instruction of each env's task
        "task": list[str] (B),            # Meta-World task name, e.g. "drawer-open-v3"
        "raw": float32 (B, 39),           # Meta-World's full observation (experts use it)
        "step": int64 (B,),               # steps so far in each env's episode (0: it just began)
    }
    actions = policy.predict(obs)         # float (B, T, 4) in the env's action space [-1, 1]

The evaluator executes each chunk open-loop for ``min(T, n_action_steps)`` steps before asking again,
and calls ``policy.reset(n)`` before a batch of ``n`` episodes starts. A policy that ignores pixels
sets ``uses_images = False`` so the evaluator may skip rendering (``obs["image"]`` is then None).

Policies are resolved by ``load_policy(spec)``: ``"expert"`` / ``"random"`` (built-ins) or a checkpoint
directory whose ``config.json`` has a ``model_type`` registered in ``POLICY_LOADERS``::

    @POLICY_LOADERS.register("vlatrim-reference-vla")
    def load(path: Path, device: str) -> Policy: ...
"""

from __future__ import annotations

import importlib
import json
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlatrim.errors import VlatrimError
from vlatrim.registry import Registry

ACTION_DIM = 4


@runtime_checkable
class Policy(Protocol):
    """Batched observation -> action-chunk map (see the module docstring for shapes)."""

    def reset(self, n: int) -> None:
        """Called before a batch of ``n`` episodes starts (clear any per-episode state)."""

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        """Action chunks float (B, T, 4) for a batch of B observations."""


def uses_images(policy: Policy) -> bool:
    """Whether ``policy`` reads ``obs["image"]`` (policies say otherwise with ``uses_images = False``)."""
    return bool(getattr(policy, "uses_images", True))


# Checkpoint loaders: config.json model_type -> loader(path, device) -> Policy.
PolicyLoader = Callable[[Path, str], Policy]
POLICY_LOADERS: Registry[PolicyLoader] = Registry("policy model_type")

# Built-in policies: name -> factory(seed) -> Policy.
BUILTIN_POLICIES: Registry[Callable[[int], Policy]] = Registry("built-in policy")

# Packages that register checkpoint loaders when imported; imported on demand by load_policy so that
# `vlatrim.sim` never depends on them at import time (and works before they exist).
LOADER_MODULES: tuple[str, ...] = ("vlatrim.models",)


@BUILTIN_POLICIES.register("expert")
class ExpertPolicy:
    """Meta-World's scripted expert for each env's task, on the raw 39-d observation.

    Actions are clipped to [-1, 1] (some experts exceed it; the env would clip anyway), chunk length 1.
    """

    uses_images = False

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


@BUILTIN_POLICIES.register("random")
class RandomPolicy:
    """Uniform random actions in [-1, 1]^4, a floor for success rates.

    With ``obs["episode"]`` (the evaluator passes it) the action of each env is drawn from a generator
    seeded by (seed, task, episode, step), so an episode's actions do not depend on which worker ran
    it, on the other episodes in the batch, or on a resume. Without it, one seeded stream is used.
    """

    uses_images = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self, n: int) -> None:
        pass

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        b = len(obs["state"])
        if obs.get("episode") is None:
            return self._rng.uniform(-1.0, 1.0, size=(b, 1, ACTION_DIM)).astype(np.float32)  # (B, 1, 4)
        out = np.empty((b, 1, ACTION_DIM), np.float32)
        for i, (task, ep, step) in enumerate(zip(obs["task"], obs["episode"], obs["step"])):
            key = [self.seed, zlib.crc32(task.encode()), int(ep), int(step)]  # stable across processes
            out[i, 0] = np.random.default_rng(key).uniform(-1.0, 1.0, size=ACTION_DIM)
        return out  # (B, 1, 4)


def _import_loader_modules() -> None:
    for name in LOADER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise  # a real missing dependency inside the package, not its absence


def load_policy(spec: str, device: str = "cpu", seed: int = 0) -> Policy:
    """Resolve a policy spec: a built-in name (``expert``, ``random``) or a checkpoint directory.

    Args:
        spec: built-in name or path to a directory with ``config.json`` (its ``model_type`` picks
            the loader in ``POLICY_LOADERS``).
        device: torch device for checkpoint policies (``cpu``, ``cuda``, ...).
        seed: seed of the built-in random policy.

    Raises:
        VlatrimError: neither a built-in nor a directory; no or bad ``config.json``; an unknown
            ``model_type`` (the message lists the registered ones).
    """
    if spec in BUILTIN_POLICIES:
        return BUILTIN_POLICIES.get(spec)(seed)
    path = Path(spec)
    if not path.is_dir():
        raise VlatrimError(
            f"policy {spec!r} is neither a built-in ({', '.join(BUILTIN_POLICIES.names())}) nor a checkpoint directory"
        )
    config = path / "config.json"
    if not config.is_file():
        raise VlatrimError(f"checkpoint directory {spec!r} has no config.json")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise VlatrimError(f"{str(config)!r} is not a JSON object") from None
    if not model_type:
        raise VlatrimError(f"{str(config)!r} has no 'model_type'; known: {', '.join(POLICY_LOADERS.names()) or '(none registered)'}")
    _import_loader_modules()
    loader = POLICY_LOADERS.get(str(model_type))
    policy = loader(path, device)
    if not isinstance(policy, Policy):
        raise TypeError(f"loader for model_type {model_type!r} returned {type(policy).__name__}, not a Policy")
    return policy
