"""Plug-ins from other installed packages: modules named in the ``vlatrim.plugins`` entry-point group.

A package that adds a policy family, a simulator backend, a scorer or a pruning method declares the
module that registers it::

    [project.entry-points."vlatrim.plugins"]
    my_vla = "my_pkg.vlatrim_plugin"

Every consumer of a registry (``family_of``, ``get_backend``, ``analyze``, ``make_plan``) calls
``load_plugins()`` before looking a name up, so the CLI sees the plug-in's entries with no import of
its own. Importing a module twice is a no-op (Python caches it), so registrations happen once.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from vlatrim.errors import VlatrimError

ENTRY_POINT_GROUP = "vlatrim.plugins"


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Import the module of every entry point in ``group``; returns the entry-point names.

    Raises:
        VlatrimError: a plug-in module cannot be imported (names it and the error).
    """
    loaded = []
    for ep in entry_points(group=group):
        try:
            importlib.import_module(ep.value.split(":")[0].strip())
        except ImportError as e:
            raise VlatrimError(f"vlatrim plug-in {ep.name!r} ({ep.value}) cannot be imported: {e}") from None
        loaded.append(ep.name)
    return loaded
