"""Peak memory of one call: CUDA allocator peak on a GPU, sampled process RSS on the CPU.

The CPU figure is the growth of the process's resident set (``/proc/self/statm``, sampled every
millisecond in a thread) during the call, above its size just before: it includes allocator slack
and anything else the process touches, and misses peaks shorter than the sampling interval. It needs
no tracing of allocations (``tracemalloc`` does not see torch's allocator).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vlatrim.quantize import state_nbytes

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class MemoryResult:
    """Memory one call needed."""

    peak_bytes: int  # CUDA: max_memory_allocated during the call; CPU: peak RSS during the call
    delta_bytes: int  # peak minus what was held just before the call (activations, workspaces)
    method: str  # how it was measured ("cuda max_memory_allocated" / "cpu rss sampled ...")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters and buffers of ``model`` (tied tensors once; a quantized tensor by
    its int data, scales and zero points)."""
    return state_nbytes(model)


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return None


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu", interval_s: float = 0.001) -> MemoryResult | None:
    """Peak memory of ``fn()`` under ``torch.no_grad()``.

    Args:
        fn: the call to measure (run once; warm it up first so lazy initialisation is not counted).
        device: where ``fn`` runs.
        interval_s: RSS sampling interval on the CPU.
    Returns:
        A MemoryResult, or None on a CPU system without ``/proc`` (nothing reliable to report).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return MemoryResult(int(peak), int(peak - before), "cuda max_memory_allocated")
    before = _rss()
    if before is None:
        return None
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            r = _rss()
            if r is not None and r > peak[0]:
                peak[0] = r
            time.sleep(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        with torch.no_grad():
            fn()
    finally:
        stop.set()
        t.join()
    after = _rss() or before
    peak[0] = max(peak[0], after)
    return MemoryResult(int(peak[0]), int(peak[0] - before),
                        f"cpu process RSS (/proc/self/statm) sampled every {interval_s * 1e3:g} ms")
