"""The quick preset end to end, as a user runs it: demonstrations -> `vlatrim train --preset quick` ->
closed-loop `vlatrim eval`, each stage timed (wall clock of the CLI call) in one run.

Issue target: training takes <= 10 min on the 2-core CPU and the policy reaches >= 60% mean
closed-loop success on >= 3 MT10 tasks. The JSON keeps the commands, the training summary
(settings, steps/s, precision, held-out action error) and the evaluation, with the machine's load.

    PYTHONPATH=src python benchmarks/bench_quick_preset.py [--work /tmp/quick] [--steps N]
        [--episodes 20] [--out benchmarks/results/quick_preset.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from vlatrim.utils.io import read_json, write_json_atomic

TASKS = "drawer-close,button-press-topdown,drawer-open,window-open"


def timed(cmd: list[str]) -> float:
    print("$", shlex.join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/vlatrim-quick", help="scratch directory (emptied first)")
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--demos", type=int, default=40, help="demonstrations per task")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    ap.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/quick_preset.json")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    v = [sys.executable, "-m", "vlatrim"]
    load = os.getloadavg()[0]
    data_cmd = v + ["data", "metaworld", "--tasks", args.tasks, "--episodes-per-task", str(args.demos),
                    "--out", str(work / "data"), "--workers", str(args.workers), "--seed", "0"]
    train_cmd = v + ["train", "--data", str(work / "data"), "--out", str(work / "run"), "--preset", "quick"]
    if args.steps:
        train_cmd += ["--steps", str(args.steps)]
    eval_cmd = v + ["eval", "--policy", str(work / "run"), "--tasks", args.tasks, "--episodes", str(args.episodes),
                    "--workers", str(args.workers), "--max-steps", "300", "--out", str(work / "eval")]
    data_s = timed(data_cmd)
    train_s = timed(train_cmd)
    eval_s = timed(eval_cmd)
    train = read_json(work / "run" / "train.json", what="training summary")
    ev = read_json(work / "eval" / "eval.json", what="evaluation")
    result = {
        "benchmark": "quick preset end to end (vlatrim data metaworld -> train --preset quick -> eval)",
        "device": f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}",
        "load_average_at_start": round(load, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commands": [shlex.join(c) for c in (data_cmd, train_cmd, eval_cmd)],
        "data_seconds": round(data_s, 1), "train_seconds_wall": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "train_target_seconds": 600, "success_target": 0.6,
        "mean_success": ev["overall"]["mean_success"],
        "train": train, "eval": ev,
    }
    write_json_atomic(args.out, result)
    print(f"data {data_s:.0f} s, train {train_s:.0f} s ({train['steps']} steps, {train['mixed_precision']}), "
          f"eval {eval_s:.0f} s: mean success {ev['overall']['mean_success']:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
