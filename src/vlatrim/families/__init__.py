"""Policy families: one module per kind of VLA, registered by name (see ``base``).

Built in: the reference VLA (``vlatrim_vla``), LeRobot SmolVLA policies (``lerobot_smolvla``; lerobot is
imported only when one is loaded) and plain transformers models (``transformers``).
A package adds a family by registering it in a module named under the ``vlatrim.plugins``
entry-point group (``[project.entry-points."vlatrim.plugins"] my_vla = "my_pkg.vlatrim_family"``),
or a program by importing its own module before calling vlatrim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.families import reference as _reference  # noqa: F401  (registers vlatrim_vla)
from vlatrim.families import transformers_lm as _transformers  # noqa: F401  (registers transformers)
from vlatrim.families.base import (
    FAMILIES,
    LossInfo,
    PolicyFamily,
    SampleSet,
    family_for_model,
    family_of,
    load,
    register_family,
)
from vlatrim.utils.plugins import ENTRY_POINT_GROUP, load_plugins


def load_policy(spec: str, device: str = "cpu", seed: int = 0, backend: Any = "metaworld") -> Any:
    """A closed-loop policy: a built-in of the simulator backend (Meta-World: ``expert``, ``random``) or a
    checkpoint directory, loaded by its family.

    Raises:
        VlatrimError: neither a built-in nor a checkpoint directory a family recognises, or a family
            whose models are not policies.
    """
    from vlatrim.sim.policy import builtin_names, builtin_policy

    policy = builtin_policy(spec, seed, backend)
    if policy is not None:
        return policy
    path = Path(spec)
    if not path.is_dir():
        raise VlatrimError(f"policy {spec!r} is neither a built-in ({', '.join(builtin_names(backend))}) nor a "
                           "checkpoint directory")
    from vlatrim.utils.device import resolve_device

    device = str(resolve_device(device))
    fam = family_of(path)
    return fam.policy(fam.load(path, device=device), device=device)


__all__ = ["ENTRY_POINT_GROUP", "FAMILIES", "LossInfo", "PolicyFamily", "SampleSet", "family_for_model", "family_of", "load",
           "load_plugins", "load_policy", "register_family"]

# Registered after the built-ins above (families are asked and listed in registration order); lerobot itself
# is imported only when a LeRobot checkpoint is loaded.
from vlatrim.families import lerobot_smolvla as _lerobot_smolvla  # noqa: E402, F401  (registers lerobot_smolvla)
