"""Closed-loop evaluation benchmark -> benchmarks/results/sim.json.

Measures, through the same code path as `vlatrim eval` (vlatrim.sim.evaluate.evaluate):
1. scripted-expert success on MT10 (target >= 95%), with the random policy beside it;
2. evaluation throughput (env steps/s, rendering 96 px images every step as a VLA needs) with 1 and
   2 worker processes and their ratio (target >= 1.7x on 2 cores), in lock-step (1 env per worker)
   and double-buffered (2 envs per worker, the default);
3. the bare simulator + renderer loop (no IPC, no policy) with the same settings, in 1 and 2
   concurrent processes: the ceiling the evaluator is measured against.
Each throughput figure is the median of --repeats runs after a warm-up run.

Usage: python benchmarks/bench_sim.py [--episodes 50] [--random-episodes 10] [--tp-episodes 50] [--repeats 3]
       [--envs-per-worker 1 2] [--tp-policy expert|random|CKPT] [--skip-success]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlatrim.families import load_policy  # noqa: E402
from vlatrim.sim.evaluate import EvalConfig, evaluate  # noqa: E402
from vlatrim.sim.render import ensure_gl_backend  # noqa: E402
from vlatrim.utils.io import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sim.json"


def success_run(policy: str, episodes: int, workers: int, seed: int) -> dict:
    cfg = EvalConfig(tasks="mt10", episodes=episodes, workers=workers, seed=seed)
    r, _ = evaluate(load_policy(policy, seed=seed), cfg, policy, progress=False)
    return {
        "policy": policy,
        "tasks": "mt10",
        "episodes_per_task": episodes,
        "workers": workers,
        "render": r.settings["render"],
        "mean_success": r.overall["mean_success"],
        "wilson95_pooled": r.overall["wilson95_pooled"],
        "errors": r.overall["errors"],
        "per_task": {t: {k: v[k] for k in ("success_rate", "episodes", "mean_steps", "wilson95")} for t, v in r.per_task.items()},
        "wall_seconds": r.timing["wall_seconds"],
    }


def throughput_run(task: str, episodes: int, workers: int, image_size: int, policy: str = "expert",
                   envs_per_worker: int = 2) -> dict:
    # Rendering forced on: the expert ignores pixels, but a VLA needs a frame every step.
    cfg = EvalConfig(tasks=task, episodes=episodes, workers=workers, envs_per_worker=envs_per_worker,
                     image_size=image_size, render=True)
    r, _ = evaluate(load_policy(policy), cfg, policy, progress=False)
    return {"env_steps": r.timing["env_steps"], "rollout_seconds": r.timing["rollout_seconds"],
            "env_steps_per_second": r.timing["env_steps_per_second"], "mean_batch_size": r.timing["mean_batch_size"],
            "success": r.overall["pooled_success"]}


def _bare_loop(task: str, image_size: int, seconds: float, barrier, q) -> None:
    from vlatrim.sim.backends.metaworld.env import MetaWorldEnv, episode_start
    from vlatrim.sim.backends.metaworld.policies import ExpertPolicy

    expert = ExpertPolicy()
    with MetaWorldEnv(task, image_size=image_size) as env:
        s = env.reset(episode_start("eval", 0, 0))
        for _ in range(20):  # warm-up (first frames allocate GL buffers)
            s = env.step(expert.predict({"raw": s.raw[None], "task": [task]})[0, 0])
        s, episode = env.reset(episode_start("eval", 0, 0)), 0
        barrier.wait()  # every process starts timing together, after its imports and warm-up
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            a = expert.predict({"raw": s.raw[None], "task": [task]})[0, 0]
            s = env.step(a)  # physics + one 96 px render with the cheap settings
            n += 1
            if s.success or env.steps >= 500:
                episode += 1
                s = env.reset(episode_start("eval", 0, episode))
        q.put(n / (time.perf_counter() - t0))


def bare_run(task: str, image_size: int, seconds: float, procs: int) -> float:
    """Total env steps/s of ``procs`` concurrent bare loops (each its own process), timed over the
    same window: a barrier releases them together (timing each process's own span instead lets
    one run alone while the other is still importing, which overstates the sum)."""
    ctx = mp.get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(procs)
    ps = [ctx.Process(target=_bare_loop, args=(task, image_size, seconds, barrier, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    rates = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=50, help="expert episodes per MT10 task")
    ap.add_argument("--random-episodes", type=int, default=10, help="random-policy episodes per MT10 task")
    ap.add_argument("--tp-task", default="drawer-open-v3", help="task of the throughput runs")
    ap.add_argument("--tp-episodes", type=int, default=50,
                    help="episodes per throughput run (50: one task of an MT10 evaluation; short runs mostly time env creation)")
    ap.add_argument("--envs-per-worker", type=int, nargs="+", default=[1, 2],
                    help="slots per worker to measure (1: lock-step; 2: double-buffered, the default of vlatrim eval)")
    ap.add_argument("--bare-seconds", type=float, default=10.0, help="length of each bare-loop measurement")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per throughput figure (median)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--skip-success", action="store_true", help="only the throughput part")
    ap.add_argument("--tp-policy", default="expert",
                    help="policy of the throughput runs: expert, random or a checkpoint directory (a VLA that returns chunks)")
    ap.add_argument("--out", default=str(RESULTS), help="where to write the JSON")
    args = ap.parse_args()

    backend = ensure_gl_backend()
    load_before = os.getloadavg()
    out: dict = {
        "benchmark": "sim",
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; MUJOCO_GL={backend}",
        "note": "CPU timings: compare with the load averages recorded beside them",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_average_before": [round(x, 2) for x in load_before],
    }
    t_all = time.perf_counter()
    if not args.skip_success:
        out["expert_mt10"] = success_run("expert", args.episodes, 2, seed=0)
        out["random_mt10"] = success_run("random", args.random_episodes, 2, seed=0)
        out["expert_target_met"] = out["expert_mt10"]["mean_success"] >= 0.95
        out["success_command"] = out["command"]
    elif Path(args.out).exists():  # keep the success figures of an earlier full run (they are not timings)
        old = json.loads(Path(args.out).read_text())
        for key in ("expert_mt10", "random_mt10", "expert_target_met", "success_command"):
            if key in old:
                out[key] = old[key]
        out.setdefault("success_command", old.get("command"))

    tp: dict = {"task": args.tp_task, "policy": args.tp_policy, "episodes_per_run": args.tp_episodes,
                "image_size": args.image_size, "repeats": args.repeats}
    throughput_run(args.tp_task, 2, 2, args.image_size, args.tp_policy)  # warm-up: caches, page-ins, GL driver
    for s in args.envs_per_worker:
        row: dict = {}
        for w in (1, 2):
            runs = [throughput_run(args.tp_task, args.tp_episodes, w, args.image_size, args.tp_policy, s)
                    for _ in range(args.repeats)]
            row[f"workers_{w}"] = {"env_steps_per_second_median": statistics.median(r["env_steps_per_second"] for r in runs),
                                   "runs": runs}
        row["speedup_2_over_1"] = round(row["workers_2"]["env_steps_per_second_median"]
                                        / row["workers_1"]["env_steps_per_second_median"], 3)
        row["target_met"] = row["speedup_2_over_1"] >= 1.7
        tp[f"envs_per_worker_{s}"] = row
        print(f"envs/worker {s}: W1 {row['workers_1']['env_steps_per_second_median']:.1f}  "
              f"W2 {row['workers_2']['env_steps_per_second_median']:.1f} steps/s  ratio {row['speedup_2_over_1']:.2f}",
              flush=True)
    out["eval_throughput"] = tp

    bare = {"task": args.tp_task, "seconds_per_run": args.bare_seconds, "image_size": args.image_size,
            "repeats": args.repeats}
    bare_run(args.tp_task, args.image_size, 1.0, 1)  # warm-up
    for procs in (1, 2):
        rates = [bare_run(args.tp_task, args.image_size, args.bare_seconds, procs) for _ in range(args.repeats)]
        bare[f"processes_{procs}"] = {"env_steps_per_second_median": round(statistics.median(rates), 2), "runs": [round(r, 2) for r in rates]}
    # How much parallelism the machine actually gave (2.0 on two idle cores).
    bare["speedup_2_over_1"] = round(bare["processes_2"]["env_steps_per_second_median"] / bare["processes_1"]["env_steps_per_second_median"], 3)
    out["bare_sim_render"] = bare
    out["eval_vs_bare"] = {
        f"envs_per_worker_{s}_workers_{w}": round(
            tp[f"envs_per_worker_{s}"][f"workers_{w}"]["env_steps_per_second_median"]
            / bare[f"processes_{w}"]["env_steps_per_second_median"], 3)
        for s in args.envs_per_worker for w in (1, 2)
    }
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_json_atomic(args.out, out)
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
