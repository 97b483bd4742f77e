"""Training throughput with torch's default thread count against the count vlatrim chooses from the
cores free when a stage starts (``vlatrim.cli.threads.apply_threads``), on a quiet machine and with
another process keeping one core busy, in one run. Quick-preset training steps (bench_train.py's
step: forward, backward, clipping, AdamW), median of the timed steps. Results go to
benchmarks/results/threads.json.

    PYTHONPATH=src python benchmarks/bench_threads.py [--steps 8] [--warmup 2] [--preset quick]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import bench  # noqa: E402
from vlatrim.utils.hardware import choose_threads, cpu_has_native_bf16, free_cores, usable_cores  # noqa: E402
from vlatrim.utils.io import write_json_atomic  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "threads.json"


def measure(preset: str, steps: int, warmup: int, bf16: bool) -> dict:
    default = torch.get_num_threads()
    free = free_cores()
    chosen, why = choose_threads(None, usable_cores(), free)
    out = {"free_cores": free, "chosen_threads": chosen, "why": why, "default_threads": default}
    for name, n in (("default", default), ("chosen", chosen)):
        torch.set_num_threads(n)
        r = bench(preset, torch.device("cpu"), steps, warmup, bf16=bf16)
        out[name] = {"threads": n, "steps_per_s": r["steps_per_s"], "median_s_per_step": r["median_s_per_step"]}
    torch.set_num_threads(default)
    out["chosen_over_default"] = out["chosen"]["steps_per_s"] / out["default"]["steps_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--note", default="", help="free text stored with the results")
    args = ap.parse_args()
    bf16 = cpu_has_native_bf16()  # what `vlatrim train --preset quick` uses on this CPU
    load0 = os.getloadavg()[0]
    quiet = measure(args.preset, args.steps, args.warmup, bf16)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(2.0)  # let the scheduler settle the busy loop on a core
        loaded = measure(args.preset, args.steps, args.warmup, bf16)
    finally:
        busy.kill()
        busy.wait()
    res = {"benchmark": "training steps/s: torch's default threads vs the free-core choice",
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}",
           "precision": "bf16 autocast" if bf16 else "fp32", "preset": args.preset,
           "load_average_at_start": load0, "note": args.note,
           "quiet": quiet, "one_core_busy": loaded}
    write_json_atomic(OUT, res)
    for name in ("quiet", "one_core_busy"):
        c = res[name]
        print(f"{name:14s} free {c['free_cores'] if c['free_cores'] is None else round(c['free_cores'], 2)}  "
              f"default {c['default']['threads']} threads {c['default']['steps_per_s']:.2f} steps/s  "
              f"chosen {c['chosen']['threads']} threads {c['chosen']['steps_per_s']:.2f} steps/s  "
              f"({c['chosen_over_default']:.2f}x)")


if __name__ == "__main__":
    main()
