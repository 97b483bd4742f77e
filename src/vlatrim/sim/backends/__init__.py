"""Simulator backends, registered by name in ``SIM_BACKENDS``; Meta-World (``metaworld``) is the first.

Importing this package imports every module in it, so a new backend is one module here that
subclasses ``SimBackend`` and registers itself::

    @SIM_BACKENDS.register("point")
    class PointBackend(SimBackend):
        name = "point"
        action_dim, state_dim, max_steps = 2, 2, 50
        ...

``get_backend(name)`` returns an instance (an unknown name raises ``VlatrimError`` listing the valid
ones); a ``SimBackend`` instance passes through, so library calls accept either.
"""

import importlib
import pkgutil

from vlatrim.sim.backends.base import SIM_BACKENDS, SPLITS, EnvSpec, GymnasiumEnv, SimBackend, SimEnv, Step
from vlatrim.utils.plugins import load_plugins

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")


def get_backend(backend: "str | SimBackend") -> SimBackend:
    """The backend called ``backend`` (a fresh instance), or ``backend`` itself if it is one."""
    if isinstance(backend, SimBackend):
        return backend
    load_plugins()  # backends of installed plug-in packages
    return SIM_BACKENDS.get(backend)()


__all__ = ["SIM_BACKENDS", "SPLITS", "EnvSpec", "GymnasiumEnv", "SimBackend", "SimEnv", "Step", "get_backend"]
