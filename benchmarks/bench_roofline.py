"""Roofline of the reference VLA and of the real-scale shapes: measured time against the least time the
device's own measured peaks allow (``vlatrim.bench.roofline``), eager and ``torch.compile``.

1. The reference VLA (pretrained MiniLM-L6 backbone, the ``quick`` preset's architecture at 96 px, as
   ``bench_vla.py``) at 6 and 3 language blocks through ``run_bench``: median and p90 latency of the
   full observation -> action-chunk forward and of the backbone alone, control frequency, roofline
   time and measured / roofline per mode.
2. The real-scale shapes (``vlatrim bench --shape``) at full depth and a cut, params / FLOPs / roofline
   on this device; on the CPU timed only when named in ``--time-shapes`` (on a 2-core CPU a SmolVLA
   query takes tens of seconds; pi0 and OpenVLA-7B do not fit a sensible run), always on CUDA.

The device's peaks are re-measured at the start (``remeasure_peaks``) so the JSON's roofline uses peaks
taken in the same session as the timings. On a shared machine both drift with the other jobs' load.

Usage: PYTHONPATH=src python benchmarks/bench_roofline.py [--threads N] [--repeats R] [--no-compile]
       [--device cpu|cuda] [--shapes NAME ...] [--time-shapes NAME ...] [--skip-vla] [--shared]
       [--out benchmarks/results/roofline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from vlatrim.bench.run import run_bench
from vlatrim.bench.shapes import run_shape_bench
from vlatrim.models.reference import ReferenceVLA, VLAConfig
from vlatrim.prune.api import PruneRequest, execute, load_for_pruning, make_plan
from vlatrim.utils.io import write_json_atomic

STATS = {k: {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
         for k in ("observation.state", "action")}
SHAPE_CUTS = {"openvla-7b": 16, "smolvla": 8, "pi0": 9}  # keep the first half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", nargs="*", default=list(SHAPE_CUTS), help="real-scale shapes to include")
    ap.add_argument("--time-shapes", nargs="*", default=[], help="shapes to time on the CPU too")
    ap.add_argument("--skip-vla", action="store_true", help="only the shapes")
    ap.add_argument("--shape-repeats", type=int, default=5)
    ap.add_argument("--shared", action="store_true", help="say in the JSON that other jobs share the machine")
    ap.add_argument("--out", default="benchmarks/results/roofline.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    gpu = args.device.startswith("cuda")
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vla = ReferenceVLA.from_backbone(VLAConfig(image_size=96, conv_channels=(32, 64, 96, 128, 128),
                                                   max_text_tokens=12), "minilm")
        vla.set_normalization(STATS)
        vla.save_pretrained(tmp / "keep6")
        req = PruneRequest(keep_first=3)
        model, handle, d = load_for_pruning(tmp / "keep6")
        plan, before = make_plan(req, model, handle, d)
        execute(req, model, handle, plan, before, tmp / "keep3", d)
        vla_res = None if args.skip_vla else run_bench([tmp / "keep6", tmp / "keep3"], tmp / "bench", device=args.device,
                            compile=not args.no_compile, cuda_graphs=gpu, warmup=5, repeats=args.repeats,
                            threads=args.threads, remeasure_peaks=True)
        for m in vla_res["models"] if vla_res else []:
            m["path"] = m["name"]  # temporary directories are gone
        shapes = {}
        for name in args.shapes:
            timed = gpu or name in args.time_shapes
            shapes[name] = run_shape_bench(name, tmp / f"shape_{name}", device=args.device, keep=SHAPE_CUTS[name],
                                           compile=not args.no_compile and timed, cuda_graphs=gpu, warmup=2,
                                           repeats=args.shape_repeats, time=timed, threads=args.threads,
                                           remeasure_peaks=args.skip_vla and not shapes)
    machine = f"1-min load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at the end, {os.cpu_count()} cores"
    if args.shared:
        machine = "shared machine (other development jobs running): " + machine
    res = {"benchmark": {"script": "benchmarks/bench_roofline.py", "threads": args.threads, "machine": machine,
                         "reference_vla": "MiniLM-L6 keep-first 6 and 3, quick-preset architecture at 96 px",
                         "gpu": "measured" if gpu else "absent: no GPU lent; CUDA graphs and bf16 shapes not run"},
           "reference_vla": vla_res, "shapes": shapes}
    write_json_atomic(args.out, res)
    first = (vla_res or next(iter(shapes.values())))["models"][0]
    print(f"peaks: {json.dumps({k: v for k, v in first['roofline']['peaks'].items() if k != 'bytes_moved'})}")
    print(f"{'model':24s} {'part':8s} {'mode':8s} {'median ms':>10s} {'p90 ms':>9s} {'roof ms':>9s} {'x roof':>7s} {'bound':>8s}")
    for m in (vla_res["models"] if vla_res else []) + [e for r in shapes.values() for e in r["models"]]:
        for part in ("full", "backbone"):
            roof = m["roofline"][part]
            for mode, t in m["latency_ms"][part].items():
                med = f"{t['median_ms']:10.2f} {t['p90_ms']:9.2f}" if "median_ms" in t else f"{'-':>10s} {'-':>9s}"
                x = roof["measured_over_roofline"][mode]
                print(f"{m['name'][:24]:24s} {part:8s} {mode:8s} {med} {roof['roofline_ms']:9.3f} "
                      f"{x if isinstance(x, str) else (f'{x:7.1f}' if isinstance(x, float) else '      -')} {roof['bound']:>8s}")
    print(f"wrote {args.out} ({machine})")


if __name__ == "__main__":
    main()
