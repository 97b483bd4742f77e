"""Benchmark the importance scorers on a reference VLA with a 24-block decoder backbone.

What it runs (each stage is cached under --work, so a rerun skips what is done):
1. demos: Meta-World scripted-expert demonstrations (successful episodes, <= 200 steps) rendered by
   ``vlatrim.sim.backends.metaworld.env`` and written by ``vlatrim.data.lerobot.LeRobotWriter``;
2. train: a reference VLA whose language backbone is a randomly initialised 24-block Llama (GQA:
   4 query / 2 KV heads, width 128) trained briefly from scratch with the ``quick`` preset's VLA
   settings (conv encoder, chunk of 4, L1) - a trained 24-block model is not available offline;
3. scoring: every block scorer on the same held-out calibration batches (warm-up pass, then
   ``--repeats`` timed runs, median seconds), its Spearman correlation with drop-one, and the width
   scorers' cost;
4. memory: peak resident-memory growth of one training step (AdamW, forward + backward + step) and of
   each scorer, each in a fresh subprocess, sampled every 2 ms above the post-load baseline.
Writes ``benchmarks/results/analyze.json``.

Run: ``PYTHONPATH=src python benchmarks/bench_analyze.py [--work DIR] [--steps N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "analyze.json"
TASKS = ["reach-v3", "drawer-close-v3", "button-press-topdown-v3", "drawer-open-v3", "window-open-v3"]
BACKBONE = dict(model_type="llama", vocab_size=30522, hidden_size=128, num_hidden_layers=24, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=384, max_position_embeddings=128, pad_token_id=0,
                bos_token_id=101, eos_token_id=102)
BLOCK_SCORERS = ["drop_one", "gateprobe", "gate_first_order", "block_influence", "angular", "cka"]
WIDTH_SCORERS = ["head_taylor", "head_magnitude", "channel_taylor", "channel_magnitude"]


def stage_data(work: Path, episodes: int, image_size: int) -> Path:
    """Scripted-expert demos of TASKS (successful episodes only) written with the LeRobot v3 writer."""
    import numpy as np

    from vlatrim.data.lerobot import LeRobotWriter, metaworld_features
    from vlatrim.sim.backends.metaworld.env import MetaWorldEnv, episode_start
    from vlatrim.sim.backends.metaworld.instructions import instruction_for
    from vlatrim.sim.backends.metaworld.policies import ExpertPolicy
    from vlatrim.sim.render import ensure_gl_backend
    from vlatrim.utils.io import atomic_dir

    ensure_gl_backend()  # before MuJoCo is imported: picks EGL or OSMesa when MUJOCO_GL is unset
    out = work / "data"
    if (out / "meta" / "info.json").is_file():
        return out
    expert = ExpertPolicy()
    with atomic_dir(out, overwrite=True) as tmp:
        writer = LeRobotWriter(tmp, metaworld_features(image_size), fps=80)
        for task in TASKS:
            kept, k = 0, 0
            with MetaWorldEnv(task, image_size=image_size) as env:
                while kept < episodes and k < 3 * episodes:
                    step = env.reset(episode_start("demo", 0, k))
                    k += 1
                    frames: dict[str, list] = {"observation.images.corner": [], "observation.state": [], "action": [],
                                               "next.success": []}
                    for _ in range(200):
                        act = expert.predict({"raw": step.raw[None], "task": [env.task]})[0, 0]
                        frames["observation.images.corner"].append(step.image)
                        frames["observation.state"].append(step.state)
                        frames["action"].append(act)
                        step = env.step(act)
                        frames["next.success"].append(step.success)
                        if step.success:
                            break
                    if step.success:
                        writer.add_episode({key: np.stack(v) for key, v in frames.items()}, instruction_for(task))
                        kept += 1
        writer.close()
    return out


def stage_train(work: Path, data: Path, steps: int, batch_size: int) -> Path:
    from vlatrim.train.run import train_reference

    run = work / "run"
    if not (run / "train.json").is_file():
        cfg = work / "backbone24.json"
        cfg.write_text(json.dumps(BACKBONE))
        train_reference(data, run, preset="quick", resume=(run / "run_config.json").is_file(), backbone=str(cfg),
                        steps=steps, batch_size=batch_size, checkpoint_every=max(50, steps // 4))
    return run


def _load(run: Path, data: Path, batches: int, batch_size: int):
    import torch

    from vlatrim.analyze.base import ScoringContext
    from vlatrim.analyze.calibration import vla_calibration
    from vlatrim.models.adapters import locate_backbone
    from vlatrim.models.reference import ReferenceVLA

    torch.manual_seed(0)
    model = ReferenceVLA.from_pretrained(run).eval()
    cal = vla_calibration(model, data, batches, batch_size, seed=0)
    ctx = ScoringContext(model, locate_backbone(model), cal.batches, cal.loss, ("language",))
    return model, cal, ctx


def stage_score(run: Path, data: Path, batches: int, batch_size: int, repeats: int) -> dict:
    from vlatrim.analyze.base import SCORERS
    from vlatrim.analyze.run import spearman

    model, cal, ctx = _load(run, data, batches, batch_size)
    ctx.mean_loss()  # warm-up: first-touch allocations and kernel selection stay out of the timings
    out = {}
    for name in BLOCK_SCORERS + WIDTH_SCORERS:
        times, res = [], None
        for _ in range(repeats if name != "drop_one" else max(1, repeats // 2)):
            t0 = time.perf_counter()
            res = SCORERS.get(name)().score(ctx)
            times.append(time.perf_counter() - t0)
        out[name] = {"seconds_median": statistics.median(times), "seconds_all": times,
                     "scores": {p: s.tolist() for p, s in res.scores.items()}}
        if name == "gateprobe":
            out[name]["first_order"] = res.extras["first_order"]
            out[name]["second_order"] = res.extras["second_order"]
            out[name]["kappa"] = res.extras["kappa"]
    ref = out["drop_one"]["scores"][ctx.handle.blocks_path]
    t_drop = out["drop_one"]["seconds_median"]
    for name in BLOCK_SCORERS:
        out[name]["cost_vs_drop_one"] = out[name]["seconds_median"] / t_drop
        if name != "drop_one":
            out[name]["spearman_vs_drop_one"] = spearman(out[name]["scores"][ctx.handle.blocks_path], ref)
    for name in WIDTH_SCORERS:  # thousands of channel scores: keep the cost, not the values
        out[name]["units"] = sum(len(v) for v in out[name].pop("scores").values())
    out["_calibration"] = {**cal.description, "base_loss": ctx.mean_loss(), "loss": cal.loss.name}
    return out


def stage_eval(work: Path, run: Path, episodes: int) -> dict:
    """Closed-loop success of the trained model on TASKS (evaluation starts, 2 workers, 300-step limit)."""
    from vlatrim.families import load_policy
    from vlatrim.sim.evaluate import EvalConfig, run_eval

    out = work / f"eval{episodes}"
    if not (out / "eval.json").is_file():
        policy = load_policy(str(run))
        cfg = EvalConfig(tasks=TASKS, episodes=episodes, workers=2, max_steps=300, image_size=policy.image_size)
        run_eval(policy, cfg, out, str(run), progress=False)
    ev = json.loads((out / "eval.json").read_text())
    return {"episodes_per_task": episodes, "max_steps": 300, "mean_success": ev["overall"]["mean_success"],
            "per_task": {t: v["success_rate"] for t, v in ev["per_task"].items()}}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_phase(run: str, data: str, batches: int, batch_size: int, phase: str) -> None:
    """Subprocess body: load, then run one phase while sampling RSS; print the peak growth (bytes)."""
    import torch

    from vlatrim.analyze.base import SCORERS

    model, cal, ctx = _load(Path(run), Path(data), batches, batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if phase == "train_step" else None
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    if phase == "train_step":
        model.train()
        for b in cal.batches[:1]:  # one step on one batch of the same size
            loss = model.compute_loss(b)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad()
    else:
        ctx.batches = cal.batches[:1]  # scoring memory does not grow with the number of batches
        SCORERS.get(phase)().score(ctx)
    stop.set()
    th.join()
    peak[0] = max(peak[0], _rss())
    print(json.dumps({"phase": phase, "peak_growth_bytes": peak[0] - base}))


def stage_memory(run: Path, data: Path, batch_size: int) -> dict:
    out = {}
    # Magnitude scorers are forward-only like block influence; left out to keep the run short.
    for phase in ["train_step"] + BLOCK_SCORERS + ["head_taylor", "channel_taylor"]:
        cmd = [sys.executable, __file__, "--memory-phase", phase, "--work", str(run.parent),
               "--batch-size", str(batch_size)]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if res.returncode != 0:
            raise RuntimeError(f"memory phase {phase} failed:\n{res.stderr[-2000:]}")
        out[phase] = json.loads(res.stdout.strip().splitlines()[-1])["peak_growth_bytes"]
    train = out["train_step"]
    return {"peak_growth_mb": {k: v / 2**20 for k, v in out.items()},
            "ratio_to_train_step": {k: v / train for k, v in out.items() if k != "train_step"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_analyze"), help="stage cache directory (git-ignored)")
    ap.add_argument("--episodes", type=int, default=20, help="demos per task")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=100, help="training steps of the 24-block VLA")
    ap.add_argument("--train-batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4, help="calibration batches")
    ap.add_argument("--batch-size", type=int, default=16, help="calibration batch size (and the memory step's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per scorer (drop-one: half)")
    ap.add_argument("--eval-episodes", type=int, default=10,
                    help="closed-loop episodes per task of the trained model (0: skip), to show it is trained")
    ap.add_argument("--conditions", default="", help="how loaded the machine was (stored with the timings)")
    ap.add_argument("--memory-phase", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    if args.memory_phase:
        memory_phase(str(work / "run"), str(work / "data"), 1, args.batch_size, args.memory_phase)
        return
    import torch

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = stage_data(work, args.episodes, args.image_size)
    t_data = time.perf_counter() - t0
    run = stage_train(work, data, args.steps, args.train_batch_size)
    train = json.loads((run / "train.json").read_text())
    scores = stage_score(run, data, args.batches, args.batch_size, args.repeats)
    memory = stage_memory(run, data, args.batch_size)
    closed_loop = stage_eval(work, run, args.eval_episodes) if args.eval_episodes else None
    result = {
        "device": f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                  f"{os.cpu_count()} cores",
        "conditions": args.conditions or f"1-min load average {os.getloadavg()[0]:.2f} at the end",
        "model": {"backbone": BACKBONE, "blocks": BACKBONE["num_hidden_layers"],
                  "parameters": train["model"]["parameters"], "backbone_parameters": train["model"]["backbone_parameters"],
                  "trained": f"from scratch, {train['steps']} steps at batch {train['settings']['trainer']['batch_size']} "
                             f"(quick preset VLA settings, {train.get('mixed_precision')} autocast)",
                  "held_out": {k: train.get("held_out", {}).get(k) for k in ("l1", "mse")},
                  "closed_loop": closed_loop},
        "dataset": {"tasks": TASKS, "episodes_per_task": args.episodes, "image_size": args.image_size,
                    "frames": train["dataset"]["frames"], "generation_s": t_data},
        "calibration": scores.pop("_calibration"),
        "scorers": scores,
        "memory": memory,
        "command": " ".join(sys.argv),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    for n in BLOCK_SCORERS:
        s = scores[n]
        print(f"{n:18s} {s['seconds_median']:8.2f} s  cost/drop-one {s['cost_vs_drop_one']:.3f}  "
              f"Spearman {s.get('spearman_vs_drop_one', 1.0)}")
    print("memory ratio to a training step:", {k: round(v, 2) for k, v in memory["ratio_to_train_step"].items()})


if __name__ == "__main__":
    main()
