"""Resumable run directories: the one rule for "resume only if the recorded settings match".

Every verb that resumes (demo generation, training, recovery, evaluation, the study) records the
settings that decide its result when it starts, and refuses to continue a run whose recorded settings
differ from the ones it is given now. Demo generation, recovery, evaluation and the study refuse
through ``check_same_settings`` (naming the first difference and how many more). Training compares
only the flags the user typed against the run's recorded ones (the rest come from the run), with a
message naming the flag.

What a run reads (its dataset, the weights it starts from or evaluates) is part of its settings by
content, not by path: ``input_fingerprints`` records ``{"data": <fingerprint>, ...}``
(``vlatrim.utils.hashing.content_fingerprint``: cheap, content-based) under the run's ``inputs``, and
a resume whose inputs hash differently is refused through ``check_same_settings`` like any other
setting (``inputs.data: run has '...', now '...'``). One process writes a run directory at a time:
``vlatrim.utils.lock.run_dir_lock``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.utils.hashing import content_fingerprint


def settings_diff(saved: Mapping[str, Any] | None, wanted: Mapping[str, Any],
                  nested: bool = True) -> list[tuple[str, Any, Any]]:
    """Every setting whose value differs, as (dotted key, recorded value, value now), in the order of
    ``wanted`` (then keys only ``saved`` has).

    Args:
        saved: what the run recorded (None: nothing was recorded).
        wanted: the settings now.
        nested: descend into values that are dicts on both sides (``trainer.lr``) instead of reporting
            the whole dict.
    """
    saved = saved or {}
    out: list[tuple[str, Any, Any]] = []
    for key in [*wanted, *(k for k in saved if k not in wanted)]:
        a, b = saved.get(key), wanted.get(key)
        if a == b:
            continue
        if nested and isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [(f"{key}.{k}", x, y) for k, x, y in settings_diff(a, b, nested)]
        else:
            out.append((str(key), a, b))
    return out


def describe_diff(diff: list[tuple[str, Any, Any]], limit: int = 1) -> str:
    """``"(key: run has X, now Y; ...)"`` for the first ``limit`` differences, then how many more differ."""
    parts = [f"{k}: run has {a!r}, now {b!r}" for k, a, b in diff[:limit]]
    more = f", and {len(diff) - limit} more" if len(diff) > limit else ""
    return f"({'; '.join(parts)}){more}"


def check_same_settings(saved: Mapping[str, Any] | None, wanted: Mapping[str, Any], what: str, remedy: str,
                        nested: bool = True) -> None:
    """Refuse to resume when ``saved`` and ``wanted`` differ.

    Raises:
        VlatrimError: ``"cannot resume: <what> was made with other settings (<first difference>), and N
            more; <remedy>"``.
    """
    diff = settings_diff(saved, wanted, nested)
    if diff:
        raise VlatrimError(f"cannot resume: {what} was made with other settings {describe_diff(diff)}; {remedy}")


def input_fingerprints(**paths: Any) -> dict[str, str]:
    """``{name: content_fingerprint(path)}`` for each path given (None: left out)."""
    return {name: content_fingerprint(p) for name, p in paths.items() if p is not None}


def check_same_inputs(saved: Mapping[str, Any] | None, wanted: Mapping[str, Any], what: str, remedy: str) -> None:
    """Refuse to resume when the recorded input fingerprints differ from ``wanted`` (through
    ``check_same_settings``, keys ``inputs.<name>``). ``saved`` None: the run was recorded by a vlatrim
    that took no fingerprints, and there is nothing to compare."""
    if saved is None:
        return
    check_same_settings({"inputs": dict(saved)}, {"inputs": dict(wanted)}, what,
                        f"its inputs changed since it started; {remedy}")
