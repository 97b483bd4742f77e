"""The CLI's verbs. Each module in ``vlatrim.cli`` registers its command dataclass here.

A command is a dataclass (parsed by tyro, one documented field per flag) with a ``run()`` method that
calls the library and returns nothing. A verb with sub-verbs (``vlatrim data metaworld``) registers a
dict of sub-verb -> dataclass instead.
"""

from __future__ import annotations

from vlatrim.registry import Registry

COMMANDS: Registry[object] = Registry("command")
