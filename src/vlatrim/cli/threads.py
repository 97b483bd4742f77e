"""``--threads`` of the verbs that compute: torch's thread count from the cores that are free when the
verb starts, unless the user gives it (``--threads``, or ``OMP_NUM_THREADS`` as torch itself reads it)."""

from __future__ import annotations

import logging
import os

from vlatrim.errors import VlatrimError
from vlatrim.utils.hardware import choose_threads, free_cores, usable_cores

log = logging.getLogger("vlatrim")


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads for this process; returns the number set.

    Raises:
        VlatrimError: ``requested`` below 1.
    """
    import torch

    if requested is not None and requested < 1:
        raise VlatrimError(f"--threads {requested} is not valid; valid: a number of CPU threads >= 1 (or omit it)")
    cores = usable_cores()
    env = os.environ.get("OMP_NUM_THREADS")
    if requested is None and env is not None:
        try:
            requested, source = int(env), "OMP_NUM_THREADS"
        except ValueError:
            raise VlatrimError(f"OMP_NUM_THREADS={env!r} is not a number of threads") from None
        if requested < 1:
            raise VlatrimError(f"OMP_NUM_THREADS={env!r} is not valid; give a positive number of threads")
    else:
        source = "--threads"
    n, why = choose_threads(requested, cores, None if requested is not None else free_cores())
    why = source if requested is not None else why
    torch.set_num_threads(n)
    log.info("torch threads: %d (%s)", n, why)
    return n
