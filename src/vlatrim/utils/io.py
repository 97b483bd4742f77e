"""Atomic output: every result file appears whole or not at all (temp file + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlatrim.errors import VlatrimError


def _json_default(obj: Any) -> Any:
    # numpy / torch scalars and arrays, Paths and dataclass-like objects end up here.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Write ``data`` as JSON to ``path`` through a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent, default=_json_default, allow_nan=True) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; results are meant to be shared like any other file (umask applies).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that is renamed onto ``path`` when the block succeeds.

    Refuses an existing ``path`` unless ``overwrite``; on error nothing is left behind.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise VlatrimError(f"output directory {str(path)!r} already exists; choose a new --out or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)  # mkdtemp creates 0700; the finished directory follows the umask
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON with a one-line error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise VlatrimError(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VlatrimError(f"{what} {str(path)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None


def ensure_empty_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create ``path`` or accept it if empty; refuse a non-empty or unwritable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VlatrimError(f"{what} {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise VlatrimError(f"{what} {str(path)!r} is not empty; choose a new directory or remove it")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VlatrimError(f"{what} {str(path)!r} cannot be created ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise VlatrimError(f"{what} {str(path)!r} is not writable")
    return path


def check_name_lengths(path: Path, flag: str = "--out") -> None:
    """Refuse a path with a component longer than its file system takes (``os.stat`` would raise
    ENAMETOOLONG from inside ``exists()``), naming the flag and the limit."""
    import contextlib

    text = str(path)
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        anchor = next((p for p in (path, *path.parents) if len(os.fsencode(p.name)) <= 255 and p.exists()), Path("."))
        limit = os.pathconf(anchor if anchor.is_dir() else anchor.parent, "PC_NAME_MAX")
    long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if long is not None:
        raise VlatrimError(f"{flag} {text[:60] + '...' if len(text) > 60 else text!r} has a {len(os.fsencode(long))}-byte "
                           f"name; valid: names of at most {limit} bytes")
