"""Roofline of a forward pass: the device's peak matmul FLOP/s and memory bandwidth, measured once by
vlatrim itself and cached per device, and the least time a forward could take on it.

Peaks (``measure_peaks``):

- **matmul**: an ``n x n`` by ``n x n`` matmul in the model's dtype (``2 * n^3`` FLOPs), median of
  timed repeats after warm-up;
- **bandwidth**: ``dst.copy_(src)`` of a large buffer (read once, written once: ``2 * bytes``), median
  of timed repeats.

Both are what this torch reaches on this device with these threads, not the vendor's datasheet, so
``measured / roofline`` says how far a forward is from what the same machine does on its best-case
kernel. They are cached in ``<cache dir>/vlatrim/roofline.json`` (``$XDG_CACHE_HOME`` or
``~/.cache``), keyed by device name, torch version, dtype and threads; ``remeasure=True`` replaces the
entry.

Roofline time of one forward: ``max(FLOPs / peak FLOP/s, bytes moved / bandwidth)``. **Bytes moved**
is the weight bytes read once per forward (``forward_weight_bytes``: every distinct parameter and
buffer of the modules the forward runs, an embedding table only when a Linear shares it, e.g. a tied
LM head, since a lookup reads a few rows); activations and the KV cache are not counted, so it is a
lower bound on traffic and the roofline a lower bound on time.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlatrim.quantize import storage_key, stored_nbytes

CACHE_FILE = "roofline.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class Peaks:
    """What the device reaches on a large matmul and a large copy."""

    matmul_flops_per_s: float  # median over the repeats
    bandwidth_bytes_per_s: float  # (read + write) bytes per second of a large copy, median
    key: str  # device | torch | dtype | threads
    method: str  # sizes and repeats
    measured: str  # ISO time of the measurement


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    cpu = platform.processor() or platform.machine()
    try:  # the model name is more telling than "x86_64"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def peaks_key(device: torch.device, dtype: torch.dtype, threads: int | None = None) -> str:
    """Cache key: device name, torch version, dtype and (CPU) threads."""
    threads = torch.get_num_threads() if threads is None else threads
    thr = f"threads={threads}" if device.type == "cpu" else "gpu"
    return f"{device_name(device)}|torch {torch.__version__}|{str(dtype).replace('torch.', '')}|{thr}"


def cache_path() -> Path:
    """``$VLATRIM_CACHE_DIR/roofline.json`` if set, else ``<$XDG_CACHE_HOME or ~/.cache>/vlatrim/roofline.json``."""
    if os.environ.get("VLATRIM_CACHE_DIR"):
        return Path(os.environ["VLATRIM_CACHE_DIR"]) / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlatrim" / CACHE_FILE


def _median_s(fn: Any, device: torch.device, warmup: int, repeats: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _time_matmul(n: int, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    return _median_s(lambda: torch.mm(a, b), device, 3, repeats)


def _time_copy(nbytes: int, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    src = torch.ones(nbytes // torch.empty((), dtype=dtype).element_size(), device=device, dtype=dtype)
    dst = torch.empty_like(src)
    return _median_s(lambda: dst.copy_(src), device, 3, repeats)


def measure_peaks(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 10,
                  matmul_n: int | None = None, copy_bytes: int | None = None) -> Peaks:
    """Time a square matmul and a large copy on ``device`` (see the module docstring).

    Args:
        device: where to measure.
        dtype: matmul and copy dtype (the model's).
        repeats: timed repeats of each (median reported), after 3 warm-up calls.
        matmul_n: matrix size (default 8192 on CUDA, 2048 on the CPU).
        copy_bytes: copied buffer size (default 1 GiB on CUDA, 256 MiB on the CPU: beyond the caches).
    """
    gpu = device.type == "cuda"
    n = matmul_n or (8192 if gpu else 2048)
    nbytes = copy_bytes or ((1 << 30) if gpu else (256 << 20))
    with torch.no_grad():
        t_mm = _time_matmul(n, device, dtype, repeats)
        t_cp = _time_copy(nbytes, device, dtype, repeats)
    import datetime as _dt

    return Peaks(matmul_flops_per_s=2 * n ** 3 / t_mm, bandwidth_bytes_per_s=2 * nbytes / t_cp,
                 key=peaks_key(device, dtype),
                 method=f"median of {repeats}: torch.mm {n}x{n} @ {n}x{n} (2n^3 FLOPs); copy_ of "
                        f"{nbytes >> 20} MiB (read + write = 2x bytes)",
                 measured=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("peaks"), dict):
        return {}
    return data["peaks"]


def get_peaks(device: torch.device, dtype: torch.dtype = torch.float32, remeasure: bool = False,
              path: str | os.PathLike | None = None, **measure_kw: Any) -> tuple[Peaks, bool]:
    """Peaks for ``device`` / ``dtype`` / threads from the cache, measured (and cached) when absent or on
    ``remeasure``.

    Returns:
        (peaks, True when read from the cache).
    """
    path = Path(path) if path is not None else cache_path()
    key = peaks_key(device, dtype)
    cached = _read_cache(path)
    if not remeasure and key in cached:
        try:
            return Peaks(**cached[key]), True
        except TypeError:  # an entry of another layout: measure again
            pass
    peaks = measure_peaks(device, dtype, **measure_kw)
    cached[key] = asdict(peaks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": CACHE_VERSION, "peaks": cached}, indent=1))
    os.replace(tmp, path)
    return peaks, False


def forward_weight_bytes(module: nn.Module, skip_embeddings: bool = True) -> int:
    """Bytes of the weights one forward of ``module`` reads (each distinct tensor once). An
    ``nn.Embedding`` table counts only when an ``nn.Linear`` shares it (a tied LM head reads it all)."""
    linear_ptrs = {storage_key(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    skip = set()
    if skip_embeddings:
        skip = {storage_key(m.weight) for m in module.modules()
                if isinstance(m, nn.Embedding) and storage_key(m.weight) not in linear_ptrs}
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        p = storage_key(t)
        if p in seen or p in skip:
            continue
        seen.add(p)
        total += stored_nbytes(t)  # a quantized weight by its int data and scales
    return total


def roofline(flops: float, bytes_moved: float, peaks: Peaks) -> dict[str, Any]:
    """Least time of a forward of ``flops`` FLOPs reading ``bytes_moved`` bytes on ``peaks``.

    Returns:
        ``{flops, bytes_moved, compute_ms, memory_ms, roofline_ms, bound ("compute" | "memory"),
        arithmetic_intensity (FLOPs / byte)}``.
    """
    compute_ms = 1e3 * flops / peaks.matmul_flops_per_s
    memory_ms = 1e3 * bytes_moved / peaks.bandwidth_bytes_per_s
    return {"flops": int(flops), "bytes_moved": int(bytes_moved), "compute_ms": compute_ms, "memory_ms": memory_ms,
            "roofline_ms": max(compute_ms, memory_ms), "bound": "compute" if compute_ms >= memory_ms else "memory",
            "arithmetic_intensity": flops / bytes_moved if bytes_moved else None}


def with_measured(roof: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any]:
    """``roof`` plus ``measured_over_roofline {mode: median_ms / roofline_ms}`` for every timed mode
    (skipped modes keep their reason)."""
    ratio: dict[str, Any] = {}
    for mode, t in latency.items():
        if "median_ms" in t and roof["roofline_ms"] > 0:
            ratio[mode] = t["median_ms"] / roof["roofline_ms"]
        else:
            ratio[mode] = {"skipped": t.get("skipped", "not timed")}
    return {**roof, "measured_over_roofline": ratio}


def peaks_entry(peaks: Peaks, cached: bool) -> dict[str, Any]:
    """The ``roofline.peaks`` entry of bench.json."""
    return {**asdict(peaks), "matmul_tflops": peaks.matmul_flops_per_s / 1e12,
            "bandwidth_gb_s": peaks.bandwidth_bytes_per_s / 1e9, "from_cache": cached,
            "bytes_moved": "weight bytes read once per forward (embedding tables only when a Linear shares them); "
                           "activations and KV cache not counted: a lower bound"}
