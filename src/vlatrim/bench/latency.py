"""Wall-clock latency of a callable: warm-up, then the median (and p90) of timed repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class LatencyResult:
    """Timings of one callable."""

    median_ms: float  # median over the timed repeats
    min_ms: float  # fastest repeat (least disturbed by other processes on a shared machine)
    repeats: int  # number of timed repeats
    warmup: int  # untimed calls before timing
    samples_ms: list[float] = field(default_factory=list)  # every timed repeat, in order
    p90_ms: float | None = None  # 90th percentile (linear interpolation between order statistics)


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, interpolating linearly between order statistics
    (numpy's default): for n samples, position ``(n - 1) * q / 100`` in the sorted list."""
    if not samples:
        raise ValueError("percentile of no samples")
    s = sorted(samples)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(fn: Callable[[], object], warmup: int = 3, repeats: int = 10,
                    device: torch.device | str | None = None, no_grad: bool = True) -> LatencyResult:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls, synchronising the device
    around each so asynchronous GPU work is counted.

    Args:
        fn: the work to time (closes over its inputs).
        warmup: untimed calls first (allocator, caches, lazy init).
        repeats: timed calls.
        device: the device ``fn`` runs on; CUDA is synchronised.
        no_grad: run under ``torch.no_grad()`` (inference); False to time training steps.
    Returns:
        A LatencyResult in milliseconds.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    with torch.set_grad_enabled(not no_grad):
        return _timed(fn, warmup, repeats, device)


def _timed(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device | str | None) -> LatencyResult:
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return LatencyResult(statistics.median(samples), min(samples), repeats, warmup, samples, percentile(samples, 90))
