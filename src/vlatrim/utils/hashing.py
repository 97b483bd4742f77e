"""Content hashes that identify checkpoints and datasets in result files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_sha256(path: str | os.PathLike, pattern: str = "*") -> str:
    """A hash over the names and contents of the files in ``path`` (sorted, non-recursive)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob(pattern)):
        if f.is_file():
            h.update(f.name.encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()
