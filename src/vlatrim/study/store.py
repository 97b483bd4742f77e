"""Stage directories of a study: each stage's output lives in ``<out>/<stage>/`` and is complete
exactly when it holds ``stage.json`` (written last, then the directory is renamed into place).

A stage runs in ``<out>/<stage>.partial/``; a long stage (training) can resume inside it after an
interruption; only a finished stage is renamed to its final name, so a resumed study skips it.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlatrim.utils.io import read_json, write_json_atomic

STAGE_FILE = "stage.json"


@dataclass
class StageLog:
    """What happened to each stage in this invocation: ``ran`` or ``resumed`` (found complete), and the
    seconds the stage took when it ran."""

    status: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    on_start: Callable[[str], None] | None = None  # called with the stage's name before a stage runs (not when resumed)


def stage_dir(out: Path, name: str) -> Path:
    return out / name


def is_complete(out: Path, name: str) -> bool:
    return (out / name / STAGE_FILE).is_file()


def run_stage(out: Path, name: str, fn: Callable[[Path], dict[str, Any]], log: StageLog,
              fresh_partial: bool = True) -> dict[str, Any]:
    """Run stage ``name`` unless complete; return its ``stage.json`` summary.

    Args:
        out: the study directory.
        name: stage name, also its directory (may contain ``/`` for nested stages).
        fn: ``fn(work_dir) -> summary``; writes the stage's files into ``work_dir`` (which exists
            unless ``fresh_partial`` asked for it to be absent, as for tools that create it atomically).
        log: records ``ran`` / ``resumed`` and seconds.
        fresh_partial: remove a leftover ``.partial`` directory first and pass a path that does not
            exist; False: pass the leftover (the stage resumes inside it) or a new empty directory.
    """
    final = out / name
    if (final / STAGE_FILE).is_file():
        rec = read_json(final / STAGE_FILE, what="stage record")
        log.status[name], log.seconds[name] = "resumed", float(rec["seconds"])  # the run that made it
        return rec["summary"]
    partial = out / f"{name}.partial"
    if fresh_partial:
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.mkdir(parents=True, exist_ok=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if log.on_start is not None:
        log.on_start(name)
    t0 = time.perf_counter()
    try:
        summary = fn(partial)
    except BaseException:
        if partial.is_dir() and not any(partial.iterdir()):  # nothing to resume from: leave no trace
            partial.rmdir()
        raise
    dt = time.perf_counter() - t0
    partial.mkdir(parents=True, exist_ok=True)
    write_json_atomic(partial / STAGE_FILE, {
        "stage": name, "seconds": dt,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "summary": summary})
    if final.exists():  # an incomplete final directory (no stage.json) cannot be trusted
        shutil.rmtree(final)
    os.replace(partial, final)
    log.status[name], log.seconds[name] = "ran", dt
    return summary
