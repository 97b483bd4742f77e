"""What the machine's processor can do, where it changes which settings are fast."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import torch

from vlatrim.errors import VlatrimError

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX), which oneDNN uses.

    Where it has them, bf16 autocast on the CPU is markedly faster than fp32; plain AVX-512 (e.g.
    Skylake/Cascade Lake) only converts, so bf16 there is emulated and slower.
    """
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [c for c in checks if c is not None]
    try:
        return any(bool(c()) for c in checks)
    except RuntimeError:  # a torch built without the CPU capability probes
        return False


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores(sample_s: float = 0.25) -> float | None:
    """How many of this machine's cores other processes leave idle right now: the idle share of two
    ``/proc/stat`` samples ``sample_s`` apart, times the core count (Linux; None elsewhere).

    A load average would lag by a minute; this sees the load of the moment a stage starts.
    """

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return vals[3] + (vals[4] if len(vals) > 4 else 0), sum(vals)  # idle + iowait, total jiffies

    try:
        idle0, total0 = read()
        time.sleep(sample_s)
        idle1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def choose_threads(requested: int | None, cores: int, free: float | None) -> tuple[int, str]:
    """torch's intra-op thread count for a stage, and why.

    ``requested`` (``--threads``) wins. Otherwise the cores that are free now, rounded, at least 1 and
    at most ``cores``: on a 2-core machine with one core busy elsewhere, 1 thread trains 2.4x faster
    than torch's default of 2 (the two threads wait on each other at every op). Without a reading of
    the free cores, all ``cores``.
    """
    if requested is not None:
        return requested, "--threads"
    if free is None:
        return cores, f"{cores} usable cores (free cores unknown here)"
    n = min(max(int(round(free)), 1), cores)
    return n, f"{free:.1f} of {cores} cores free"


def stage_threads(threads: int | str | None) -> Callable[[str], None] | None:
    """For a run of stages (a study): a function that sets torch's intra-op threads as each stage starts.
    ``"auto"``: from the cores free at that moment (``choose_threads``), so a stage that starts while
    another job holds a core runs with fewer threads than one that starts on a quiet machine; an int:
    that many for every stage; None: torch's threads are left alone (no function)."""
    if threads is None:
        return None
    if threads != "auto" and (not isinstance(threads, int) or threads < 1):
        raise VlatrimError(f"threads {threads!r} is not valid; valid: a number of CPU threads >= 1, or 'auto'")

    def apply(stage: str) -> None:
        auto = threads == "auto"
        n, why = choose_threads(None if auto else int(threads), usable_cores(), free_cores() if auto else None)
        torch.set_num_threads(n)
        log.info("stage %s: %d torch thread(s) (%s)", stage, n, why)

    return apply
