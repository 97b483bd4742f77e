"""Demonstration generation and dataset reading benchmark -> benchmarks/results/data.json.

1. `vlatrim data metaworld` through the library (vlatrim.sim.backends.metaworld.demos.generate_demos): frames/s
   of scripted-expert rollouts with images (96 px), with 1 and 2 worker processes, and the time an
   MT10 x 50-episode run would take at that rate (using the measured mean episode length).
2. Reading the result back (vlatrim.data.lerobot.LeRobotDataset): open time (all non-image
   columns), bulk image decode frames/s.
Rates are medians of --repeats runs.

Usage: python benchmarks/bench_data.py [--tasks drawer-open,reach,button-press-topdown] [--episodes 4] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlatrim.data.lerobot import LeRobotDataset  # noqa: E402
from vlatrim.sim.backends.metaworld.demos import DemoConfig, generate_demos  # noqa: E402
from vlatrim.sim.backends.metaworld.tasks import MT10  # noqa: E402
from vlatrim.sim.render import ensure_gl_backend  # noqa: E402
from vlatrim.utils.io import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "data.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="drawer-open,reach,button-press-topdown")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per task per run")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    backend = ensure_gl_backend()
    out: dict = {
        "benchmark": "data",
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; MUJOCO_GL={backend}",
        "note": "CPU timings: compare with the load averages recorded beside them",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    tmp = Path(tempfile.mkdtemp(prefix="vlatrim-bench-data-"))
    try:
        gen: dict = {"tasks": args.tasks, "episodes_per_task": args.episodes, "image_size": args.image_size}
        last = None
        for w in (1, 2):
            runs = []
            for r in range(args.repeats):
                d = tmp / f"w{w}-{r}"
                t0 = time.perf_counter()
                rep = generate_demos(DemoConfig(tasks=args.tasks, episodes_per_task=args.episodes, image_size=args.image_size, workers=w), d, progress=False)
                runs.append({"frames": rep.frames, "episodes": rep.episodes, "failed": rep.failed,
                             "rollout_frames_per_second": rep.frames_per_second, "wall_seconds_incl_assembly": round(time.perf_counter() - t0, 2)})
                last = d
            gen[f"workers_{w}"] = {"frames_per_second_median": statistics.median(x["rollout_frames_per_second"] for x in runs), "runs": runs}
        mean_len = runs[-1]["frames"] / runs[-1]["episodes"]
        best = max(gen["workers_1"]["frames_per_second_median"], gen["workers_2"]["frames_per_second_median"])
        gen["mean_episode_frames"] = round(mean_len, 1)
        # Estimate for MT10 x 50 with these tasks' mean episode length (MT10 tasks differ in length).
        gen["estimate_mt10_x50_minutes"] = round(len(MT10) * 50 * mean_len / best / 60, 1)
        out["generation"] = gen

        t0 = time.perf_counter()
        ds = LeRobotDataset(last)
        open_s = time.perf_counter() - t0
        ds.images(list(range(min(64, ds.num_frames))))  # warm-up
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            ims = ds.images()
            rates.append(len(ims) / (time.perf_counter() - t0))
        out["reading"] = {"frames": ds.num_frames, "open_seconds": round(open_s, 3),
                          "bulk_decode_frames_per_second_median": round(statistics.median(rates), 1),
                          "bytes_per_frame_on_disk": round(sum(p.stat().st_size for p in (last / "data").rglob("*.parquet")) / ds.num_frames, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json_atomic(RESULTS, out)
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
