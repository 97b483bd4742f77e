"""Content hashes that identify checkpoints and datasets in result files, and cheap content
fingerprints of the inputs a resumed run must find unchanged."""

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


# Content fingerprints of run inputs (weights, datasets), recorded so that a resume can refuse inputs
# that changed. They must be cheap on multi-GB checkpoints and datasets, and must read contents, not
# sizes or mtimes (a copy keeps neither, and a rewrite may keep both). The choice:
#   - files up to FULL_HASH_MAX bytes: the sha256 of the whole file;
#   - larger files: the size, the whole safetensors header (tensor names, dtypes, shapes, offsets) for
#     ``.safetensors`` files, and SAMPLES blocks of SAMPLE_BYTES spread evenly from the first byte to
#     the last. Retrained or different weights change bytes everywhere, so a sample sees it; what it
#     cannot see is an edit confined to bytes between the samples of a same-size file.
# A directory's fingerprint covers every file under it (recursively, sorted by relative path, with
# hidden files such as locks and temporaries left out), by path and content.
FULL_HASH_MAX = 8 << 20
SAMPLES = 32
SAMPLE_BYTES = 64 << 10


def _sampled_sha256(path: Path, size: int) -> str:
    h = hashlib.sha256(f"sampled:{size}:{SAMPLES}x{SAMPLE_BYTES}".encode())
    with open(path, "rb") as f:
        if path.name.endswith(".safetensors"):
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            h.update(head)
            h.update(f.read(min(n, size)))
        last = max(size - SAMPLE_BYTES, 0)
        for i in range(SAMPLES):
            f.seek(last * i // (SAMPLES - 1))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> str:
    """A content fingerprint of one file: its full sha256 up to ``FULL_HASH_MAX`` bytes, else a sampled
    digest (see the comment above)."""
    path = Path(path)
    size = path.stat().st_size
    return file_sha256(path) if size <= FULL_HASH_MAX else _sampled_sha256(path, size)


def content_fingerprint(path: str | os.PathLike) -> str:
    """A content fingerprint of a file or a directory tree (every non-hidden file, by relative path)."""
    path = Path(path)
    if path.is_file():
        return file_fingerprint(path)
    h = hashlib.sha256()
    files = [f for f in path.rglob("*") if f.is_file()
             and not any(part.startswith(".") for part in f.relative_to(path).parts)]
    for f in sorted(files, key=lambda f: f.relative_to(path).as_posix()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(file_fingerprint(f).encode())
    return h.hexdigest()
