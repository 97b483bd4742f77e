"""Does the policy use its camera? The same short training with and without the state token, on the
MT10 tasks that need a target position, with closed-loop success and the held-out image swap.

For each of `--state True` and `--state False`: `vlatrim train --preset mt10 --steps N` on one
dataset, then `vlatrim eval` over unseen starts. `train.json`'s `held_out.image_swap` gives the
held-out action error with each sample's own image and with the image of the same step of another
held-out episode of its task: a policy that ignores its camera has the same error with both.

    PYTHONPATH=src python benchmarks/bench_state_token.py [--tasks T] [--demos 50] [--steps 1500]
        [--episodes 20] [--work DIR] [--data DIR] [--out JSON]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from bench_preset import MAX_STEPS, timed  # this script's directory is on sys.path
from vlatrim.utils.io import read_json, write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="reach,push,pick-place")
    ap.add_argument("--demos", type=int, default=50, help="demonstrations per task")
    ap.add_argument("--steps", type=int, default=1500, help="training steps of each run")
    ap.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="/tmp/vlatrim-state-token", help="scratch directory, emptied first")
    ap.add_argument("--data", default=None, help="reuse this dataset instead of generating one")
    ap.add_argument("--out", default="benchmarks/results/state_token.json")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    v = [sys.executable, "-m", "vlatrim"]
    data = Path(args.data or work / "data")
    load = os.getloadavg()[0]
    data_cmd = v + ["data", "metaworld", "--tasks", args.tasks, "--episodes-per-task", str(args.demos),
                    "--out", str(data), "--workers", str(args.workers), "--seed", "0"]
    data_s = None if args.data else timed(data_cmd)
    runs = {}
    for state in ("True", "False"):
        run, ev_dir = work / f"run-state-{state}", work / f"eval-state-{state}"
        train_cmd = v + ["train", "--data", str(data), "--out", str(run), "--preset", "mt10",
                         "--steps", str(args.steps), "--state", state]
        eval_cmd = v + ["eval", "--policy", str(run), "--tasks", args.tasks, "--episodes", str(args.episodes),
                        "--workers", str(args.workers), "--max-steps", str(MAX_STEPS), "--out", str(ev_dir)]
        train_s, eval_s = timed(train_cmd), timed(eval_cmd)
        train = read_json(run / "train.json", what="training summary")
        ev = read_json(ev_dir / "eval.json", what="evaluation")
        runs[f"state={state}"] = {
            "commands": [shlex.join(train_cmd), shlex.join(eval_cmd)],
            "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
            "steps_per_s": train["steps_per_s"], "mixed_precision": train["mixed_precision"],
            "held_out_l1": train["held_out"]["l1"], "image_swap": train["held_out"]["image_swap"],
            "successes": sum(t["successes"] for t in ev["per_task"].values()),
            "episodes": sum(t["episodes"] for t in ev["per_task"].values()),
            "mean_success": ev["overall"]["mean_success"],
            "per_task": {k: t["success_rate"] for k, t in ev["per_task"].items()},
        }
        r, swap = runs[f"state={state}"], runs[f"state={state}"]["image_swap"]
        other = f"{swap['l1_other_image']:.4f}" if swap else "n/a (one held-out episode per task)"
        print(f"state={state}: {r['successes']}/{r['episodes']} successes; held-out L1 {r['held_out_l1']:.4f}, "
              f"{other} with another episode's image", flush=True)
    result = {
        "benchmark": "state token on/off: closed-loop success and held-out image swap after a short training",
        "device": f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}",
        "load_average_at_start": round(load, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tasks": args.tasks, "demos_per_task": args.demos, "steps": args.steps, "episodes_per_task": args.episodes,
        "data_command": shlex.join(data_cmd), "data_reused": args.data,
        "data_seconds": None if data_s is None else round(data_s, 1),
        "runs": runs,
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
