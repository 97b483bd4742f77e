"""Settings dataclasses built from dicts (config.json, run_config.json, presets): the one strict reader."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from vlatrim.errors import VlatrimError

T = TypeVar("T")


def strict_from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls(**data)`` for a dataclass ``cls``, refusing keys it has no field for.

    Args:
        cls: the dataclass (its ``__post_init__`` validates the values).
        data: field values.
        what: what the settings are, for the message (e.g. ``"training setting"``).

    Raises:
        VlatrimError: ``data`` is not a dict, or names unknown fields (all listed, with the valid ones).
    """
    if not isinstance(data, dict):
        raise VlatrimError(f"{what}s must be a JSON object, not {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise VlatrimError(f"unknown {what}(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return cls(**data)
