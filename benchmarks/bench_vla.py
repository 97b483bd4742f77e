"""The reference VLA (pretrained MiniLM-L6 backbone) at 6, 4, 3, 2 and 1 language blocks: params,
FLOPs, latency of the full observation -> action-chunk forward and of the backbone alone, control
frequency and peak memory, all through ``vlatrim.bench.run.run_bench`` in one run (ratios relative to
the 6-block model).

Untrained weights are as fast as trained ones, so the models are built fresh: the ``quick`` training
preset's architecture at 96 px (9 image tokens), pruned with ``vlatrim.prune`` (keep-first k). Each
model is timed after warm-up; medians and minima are reported (the minimum is the least disturbed
on a shared machine, which the JSON notes).

Usage: PYTHONPATH=src python benchmarks/bench_vla.py [--threads N] [--repeats R] [--compile] [--device cpu|cuda]
       [--out benchmarks/results/vla.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from vlatrim.bench.run import run_bench
from vlatrim.models.reference import ReferenceVLA, VLAConfig
from vlatrim.prune.api import PruneRequest, execute, load_for_pruning, make_plan
from vlatrim.utils.io import write_json_atomic

KEEP = (4, 3, 2, 1)
STATS = {k: {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
         for k in ("observation.state", "action")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/vla.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vla = ReferenceVLA.from_backbone(VLAConfig(image_size=96, conv_channels=(32, 64, 96, 128, 128),
                                                   max_text_tokens=12), "minilm")
        vla.set_normalization(STATS)
        vla.save_pretrained(tmp / "keep6")
        for k in KEEP:
            req = PruneRequest(keep_first=k)
            model, handle, d = load_for_pruning(tmp / "keep6")
            plan, before = make_plan(req, model, handle, d)
            execute(req, model, handle, plan, before, tmp / f"keep{k}", d)
        res = run_bench([tmp / "keep6"] + [tmp / f"keep{k}" for k in KEEP], tmp / "bench", device=args.device,
                        batch_size=args.batch_size, compile=args.compile, cuda_graphs=args.device.startswith("cuda"),
                        warmup=5, repeats=args.repeats, threads=args.threads)
    res["benchmark"] = {"script": "benchmarks/bench_vla.py", "models": "reference VLA, MiniLM-L6 keep-first k, "
                        "quick-preset architecture at 96 px", "threads": args.threads,
                        "machine": f"1-min load average {os.getloadavg()[0]:.2f} at start"}
    for m in res["models"]:
        m["path"] = m["name"]  # temporary directories are gone
    write_json_atomic(args.out, res)
    print(f"{'blocks':>6s} {'params M':>9s} {'GFLOPs':>7s} {'full ms':>8s} {'bb ms':>7s} {'speedup':>8s} {'FLOP ratio':>10s} {'Hz':>6s}")
    for m in res["models"]:
        r = m["relative_to_first"]
        print(f"{m['num_blocks']:6d} {m['params']['total'] / 1e6:9.2f} {m['flops']['counted']['full'] / 1e9:7.3f} "
              f"{m['latency_ms']['full']['eager']['median_ms']:8.2f} {m['latency_ms']['backbone']['eager']['median_ms']:7.2f} "
              f"{r['speedup_full_eager']:8.2f} {1 / r['flops_full']:10.2f} {m['control']['eager']['query_hz']:6.1f}")
    print(json.dumps({"device": res["device"], "notes": res["notes"]}))


if __name__ == "__main__":
    main()
