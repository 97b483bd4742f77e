"""Quantization stacked on pruning, as a user runs it: `vlatrim quantize` of a (recovered, pruned) checkpoint
with each scheme the CPU runs, then `vlatrim eval` of the float and every quantized model on the same
closed-loop episodes (same tasks, seeds and start states) and `vlatrim bench` of all of them in one call
(latency medians and p90, weight bytes), in one run.

Issue target (CPU): for the recovered 50%-pruned reference VLA, the int8 checkpoint (embeddings included)
is <= 0.3x of its fp32 bytes and its closed-loop success is within 5 points of the float model's on the
same episodes; the latency change is reported whatever it is.

    PYTHONPATH=src python benchmarks/bench_quantize.py --model RECOVERED_DIR --tasks door-close,handle-press
        [--schemes int8-weight,int8-dynamic] [--episodes 20] [--max-steps 300] [--workers 2]
        [--compile] [--work DIR] [--out benchmarks/results/quantize.json] [--note TEXT]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vlatrim.utils.io import read_json, write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "quantize.json"


def _cli(args: list[str]) -> float:
    """Run a vlatrim verb as a user does; returns its wall-clock seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlatrim", *args], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="float checkpoint (e.g. a study's recovered 50%%-pruned variant)")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--schemes", default="int8-weight,int8-dynamic")
    ap.add_argument("--episodes", type=int, default=20, help="closed-loop episodes per task")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=50, help="timed forwards per latency median")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (inductor) of every model")
    ap.add_argument("--work", default="/tmp/vlatrim_bench_quantize")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    schemes = [s for s in args.schemes.split(",") if s]
    models = {"float": Path(args.model)}
    seconds: dict[str, float] = {}
    quantize: dict[str, dict] = {}
    for s in schemes:
        q = work / f"q-{s}"
        seconds[f"quantize {s}"] = _cli(["quantize", "--model", args.model, "--scheme", s, "--out", str(q)])
        models[s] = q
        quantize[s] = read_json(q / "quantize.json", "quantize report")
    evals = {}
    for name, path in models.items():
        ev = work / f"eval-{name}"
        seconds[f"eval {name}"] = _cli(["eval", "--policy", str(path), "--tasks", args.tasks, "--episodes",
                                        str(args.episodes), "--max-steps", str(args.max_steps), "--workers",
                                        str(args.workers), "--seed", str(args.seed), "--out", str(ev)])
        evals[name] = json.loads((ev / "eval.json").read_text())
    seconds["bench"] = _cli(["bench", "--model", *map(str, models.values()), "--out", str(work / "bench"),
                             "--repeats", str(args.repeats), *(["--compile"] if args.compile else [])])
    bench = {name: m for name, m in zip(models, json.loads((work / "bench" / "bench.json").read_text())["models"], strict=True)}

    def summary(name: str) -> dict:
        e, b = evals[name], bench[name]
        lat = b["latency_ms"]
        return {
            "success_rate": e["overall"]["pooled_success"], "wilson95": e["overall"]["wilson95_pooled"],
            "successes": e["overall"]["successes"], "episodes": e["overall"]["episodes"],
            "per_task": {t: v["success_rate"] for t, v in e["per_task"].items()},
            "weight_bytes": b["weight_bytes"],
            "latency_full_ms": {m: {k: lat["full"][m].get(k) for k in ("median_ms", "p90_ms", "min_ms")} for m in lat["full"]},
            "latency_backbone_ms": {m: {k: lat["backbone"][m].get(k) for k in ("median_ms", "p90_ms")} for m in lat["backbone"]},
        }

    # The same episodes for every model: identical (task, index, start state) lists.
    starts = {name: [(ep["task"], ep["episode"], list(ep["start"])) for ep in e["episodes"]] for name, e in evals.items()}
    same_episodes = all(v == starts["float"] for v in starts.values())
    rows = {name: summary(name) for name in models}
    f = rows["float"]
    for s in schemes:
        r = rows[s]
        r["bytes_ratio"] = quantize[s]["bytes"]["ratio"]
        r["file_bytes_ratio"] = quantize[s]["file_bytes"]["ratio"]
        r["success_change_points"] = 100 * (r["success_rate"] - f["success_rate"])
        r["latency_full_ratio_eager"] = r["latency_full_ms"]["eager"]["median_ms"] / f["latency_full_ms"]["eager"]["median_ms"]
        if args.compile:  # None where a model did not compile (bench records the failure)
            c, fc = r["latency_full_ms"].get("compile", {}), f["latency_full_ms"].get("compile", {})
            r["latency_full_ratio_compile"] = (c["median_ms"] / fc["median_ms"]
                                               if c.get("median_ms") and fc.get("median_ms") else None)
        r["target_bytes_met"] = r["bytes_ratio"] <= 0.3
        r["target_success_met"] = abs(r["success_change_points"]) <= 5.0
    res = {
        "benchmark": "quantize",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": {"type": "cpu", "machine": platform.machine(), "cores": os.cpu_count(), "load_avg_1min_at_start": load0},
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
        "model": str(args.model),
        "prune": read_json(Path(args.model) / "prune.json", "prune report") if (Path(args.model) / "prune.json").is_file() else None,
        "quantize": quantize,
        "results": rows,
        "same_episodes": same_episodes,
        "bench_device": json.loads((work / "bench" / "bench.json").read_text())["device"],
        "seconds": seconds,
        "commands": "vlatrim quantize / eval / bench as in this script",
        "note": args.note,
    }
    write_json_atomic(Path(args.out), res)
    for name, r in rows.items():
        w = r["wilson95"]
        extra = "" if name == "float" else (f"  bytes {r['bytes_ratio']:.3f}x  success {r['success_change_points']:+.1f} pts"
                                            f"  latency {r['latency_full_ratio_eager']:.2f}x"
                                            + (f" (compiled {r['latency_full_ratio_compile']:.2f}x)"
                                               if r.get("latency_full_ratio_compile") else ""))
        print(f"{name:14s} success {r['success_rate']:.3f} [{w[0]:.3f}, {w[1]:.3f}]  weights {r['weight_bytes']:,} B  "
              f"full {r['latency_full_ms']['eager']['median_ms']:.2f} ms{extra}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
