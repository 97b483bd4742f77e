"""A training preset end to end, as a user runs it: demonstrations -> `vlatrim train --preset P` ->
closed-loop `vlatrim eval`, each stage timed (wall clock of the CLI call) in one run.

Issue targets: the `quick` preset trains in <= 10 min on the 2-core CPU and reaches >= 60% mean
closed-loop success on >= 3 MT10 tasks; the `mt10` preset (all 10 tasks x 50 demos) reaches >= 60%
mean success over 50 episodes per task. The JSON keeps the commands, the training summary (settings,
steps/s, precision, held-out action error) and the evaluation, with the machine's load.

    PYTHONPATH=src python benchmarks/bench_preset.py --preset quick|mt10 [--work DIR] [--steps N]
        [--episodes N] [--out JSON] [--data DIR] [--run DIR] [--train-args '--keypoints 32']

--data / --run take a dataset / finished training run made earlier with this script's commands (an
hour-long mt10 training need not be repeated to re-evaluate it); the JSON then marks the stage as
reused and gives the training time that train.json recorded instead of a wall clock taken here.
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

from vlatrim.train.presets import TRAIN_PRESETS
from vlatrim.utils.io import read_json, write_json_atomic

# Per preset: demos per task and evaluation episodes per task; the tasks are those the training preset
# was made for (``Preset.tasks``), so this benchmark measures what `vlatrim train --help` reports.
PRESETS = {
    name: dict(tasks=",".join(TRAIN_PRESETS.get(name)().tasks), demos=demos, episodes=episodes)
    for name, demos, episodes in (("quick", 40, 20), ("mt10", 50, 50))
}
MAX_STEPS = 300  # MT10 expert demos take <= 230 steps (peg-insert-side; the others <= 120)


def timed(cmd: list[str]) -> float:
    print("$", shlex.join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--work", default=None, help="scratch directory, emptied first (default /tmp/vlatrim-PRESET)")
    ap.add_argument("--tasks", default=None, help="default: the preset's")
    ap.add_argument("--demos", type=int, default=None, help="demonstrations per task (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    ap.add_argument("--episodes", type=int, default=None, help="evaluation episodes per task (default: the preset's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", default=None, help="reuse this dataset instead of generating one")
    ap.add_argument("--run", default=None, help="reuse this finished training run instead of training")
    ap.add_argument("--out", default=None, help="default benchmarks/results/PRESET_preset.json")
    ap.add_argument("--train-args", default="", help="more vlatrim train flags, one string (e.g. '--keypoints 32')")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    tasks, demos, episodes = args.tasks or p["tasks"], args.demos or p["demos"], args.episodes or p["episodes"]
    out = args.out or f"benchmarks/results/{args.preset}_preset.json"
    work = Path(args.work or f"/tmp/vlatrim-{args.preset}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, run = Path(args.data or work / "data"), Path(args.run or work / "run")
    v = [sys.executable, "-m", "vlatrim"]
    load = os.getloadavg()[0]
    data_cmd = v + ["data", "metaworld", "--tasks", tasks, "--episodes-per-task", str(demos),
                    "--out", str(data), "--workers", str(args.workers), "--seed", "0"]
    train_cmd = v + ["train", "--data", str(data), "--out", str(run), "--preset", args.preset]
    if args.steps:
        train_cmd += ["--steps", str(args.steps)]
    train_cmd += shlex.split(args.train_args)
    eval_cmd = v + ["eval", "--policy", str(run), "--tasks", tasks, "--episodes", str(episodes),
                    "--workers", str(args.workers), "--max-steps", str(MAX_STEPS), "--out", str(work / "eval")]
    data_s = None if args.data else timed(data_cmd)
    train_s = None if args.run else timed(train_cmd)
    eval_s = timed(eval_cmd)
    train = read_json(run / "train.json", what="training summary")
    generation = read_json(data / "meta" / "vlatrim_generation.json", what="generation record")
    ev = read_json(work / "eval" / "eval.json", what="evaluation")
    result = {
        "benchmark": f"{args.preset} preset end to end (vlatrim data metaworld -> train --preset {args.preset} -> eval)",
        "device": f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}",
        "load_average_at_start": round(load, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commands": [shlex.join(c) for c in (data_cmd, train_cmd, eval_cmd)],
        "reused": {"data": args.data, "run": args.run},
        "data_seconds": None if data_s is None else round(data_s, 1),
        "train_seconds_wall": round(train_s if train_s is not None else train["wall_s_this_call"], 1),
        "train_seconds_source": "train.json wall_s_this_call (reused run)" if args.run else "wall clock of the command",
        "eval_seconds": round(eval_s, 1),
        "train_target_seconds": 600 if args.preset == "quick" else None, "success_target": 0.6,
        "mean_success": ev["overall"]["mean_success"],
        "data_generation": {k: generation.get(k) for k in ("episodes", "frames", "failed", "rollout_seconds", "frames_per_second", "per_task")},
        "train": train, "eval": ev,
    }
    write_json_atomic(out, result)
    print(f"train {result['train_seconds_wall']:.0f} s ({train['steps']} steps, {train['mixed_precision']}), "
          f"eval {eval_s:.0f} s: mean success {ev['overall']['mean_success']:.3f}; wrote {out}")


if __name__ == "__main__":
    main()
