"""One writer per run directory: a lock file held while a process writes a run.

``run_dir_lock(run_dir)`` creates ``.<name>.vlatrim-lock`` beside ``run_dir`` (in its parent, so the
run directory's own "is it empty / what does it hold" checks never see it) with ``O_CREAT | O_EXCL``
and writes the holder's pid and host into it. A second writer is refused with a message naming the
holder's pid. A lock whose holder is gone (its pid no longer runs on this host) is stale: the next
writer takes it over. A lock file whose pid cannot be read is held while it is younger than
``FRESH_S`` (its creator is writing it) and stale after. A lock that cannot be created at all (a
read-only parent) is skipped with a warning. The lock is removed when the holder leaves the ``with`` block, whatever the
outcome; a killed holder leaves a stale lock, which the next run takes over.

In a distributed launch (``RANK`` set) only rank 0 takes the lock; the other ranks write through it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from vlatrim.errors import VlatrimError

LOCK_SUFFIX = ".vlatrim-lock"
log = logging.getLogger(__name__)


def lock_path(run_dir: str | os.PathLike) -> Path:
    """Where the lock of ``run_dir`` lives: ``<parent>/.<name>.vlatrim-lock``."""
    p = Path(os.path.abspath(run_dir))
    return p.parent / f".{p.name}{LOCK_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn or unreadable: its holder cannot be named, and it is treated as stale


FRESH_S = 10.0  # a lock file younger than this whose pid cannot be read yet is being written: held


def _is_stale(holder: dict, path: Path) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        try:  # created (O_EXCL) but its pid not written yet, or torn by a kill long ago
            return time.time() - path.stat().st_mtime > FRESH_S
        except FileNotFoundError:
            return False
    if holder.get("host") not in (None, socket.gethostname()):
        return False  # another machine's process (shared file system): its liveness cannot be checked
    return not _pid_alive(pid)


def _acquire(path: Path, what: str, run_dir: Path) -> bool:
    """Take the lock; False when it cannot be created at all (a read-only parent: the verb's own checks
    then say what is wrong with ``run_dir``)."""
    mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released meanwhile: try again
            if not _is_stale(holder, path):
                raise VlatrimError(
                    f"{what} {str(run_dir)!r} is being written by another process (pid {holder.get('pid')}"
                    f"{'' if holder.get('host') in (None, socket.gethostname()) else ' on ' + str(holder.get('host'))}; "
                    f"lock {str(path)!r}); wait for it to finish, or stop it first") from None
            # Take over a stale lock: move it aside, and check it is still the stale one we read (a
            # process that took it over at the same moment put its own there: give that one back).
            aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            if _read(aside) != holder:
                with contextlib.suppress(OSError):
                    os.link(aside, path)
            with contextlib.suppress(OSError):
                os.unlink(aside)
            continue
        except OSError as e:
            log.warning("%s %s: no lock taken (%s cannot be created: %s)", what, run_dir, path, e.strerror or e)
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(mine)
        return True
    raise VlatrimError(f"{what} {str(run_dir)!r}: cannot take its lock {str(path)!r} (it keeps changing hands)")


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike, what: str = "--out") -> Iterator[Path | None]:
    """Hold the lock of ``run_dir`` for the ``with`` block (see the module docstring).

    Yields:
        The lock file's path (None on ranks other than 0 of a distributed launch, and where the lock
        file cannot be created at all, e.g. a read-only parent: a warning is logged and the verb's own
        checks of ``run_dir`` decide).

    Raises:
        VlatrimError: another live process holds it (the message names its pid).
    """
    if os.environ.get("RANK", "0") not in ("", "0"):
        yield None
        return
    run_dir = Path(run_dir)
    path = lock_path(run_dir)
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VlatrimError(f"{what} {str(run_dir)!r} cannot be created ({e.strerror or e})") from None
    try:
        held = _acquire(path, what, run_dir)
    except BaseException:
        _remove_empty(made)
        raise
    try:
        yield path if held else None
    finally:
        holder = _read(path) if held else None
        if holder and holder.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()
        _remove_empty(made)


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the parent directories this lock created, where nothing else was put in them."""
    for d in dirs:  # innermost first
        try:
            d.rmdir()
        except OSError:
            return


__all__ = ["run_dir_lock", "lock_path", "LOCK_SUFFIX"]
