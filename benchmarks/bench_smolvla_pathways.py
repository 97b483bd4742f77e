"""The pathway study on a SmolVLA-architecture policy: how tolerant is each pathway to losing half its blocks?

A SmolVLA is built from scratch (``vlatrim.models.smolvla.new_smolvla``: a SmolVLM config, a tokenizer
trained on the tasks' texts, LeRobot's SmolVLA on top, every pathway trainable), trained on the quick
preset's tasks with ``vlatrim recover --method full`` (vlatrim's trainer, the policy's own flow-matching
loss) and evaluated in closed loop. Then half the blocks of each pathway go in turn, chosen by
``vlatrim analyze``'s drop-one scores on the demonstrations:

- vision: the SigLIP encoder layers alone;
- language: the VLM text layers, with their action-expert partners (SmolVLA's expert layer i attends with
  VLM layer i, so the architecture requires it);
- action: the action expert alone (``--keep-partners``), every other layer, the one expert-only cut that
  lerobot 0.4.4 runs at this depth.

Each cut is evaluated, recovered with the same budget (``--recover-steps`` of full recovery) and evaluated
again, on the same closed-loop episodes; the control is the uncut policy trained for that budget too. The layout is SmolVLA's with cross-attention in every layer
(``self_attn_every_n_layers=-1``): with the default alternation of 2, lerobot 0.4.4 runs no expert-only
cut, so the action row could not be measured apart from the language one (docs/lerobot.md).

``--methods full,lora,distill`` recovers each cut with every recovery method named (same steps, batch and
learning rate; distillation from the trained policy), the comparison behind the family's default method.
``--pathways`` limits the study to some pathways and ``--no-control`` skips the control.

Every stage writes its own directory under --work and is skipped when it is there (resumable).

    PYTHONPATH=src .venv-lerobot/bin/python benchmarks/bench_smolvla_pathways.py [--demos DIR]
        [--steps 3000] [--recover-steps 600] [--episodes 20] [--methods full[,lora,distill]]
        [--pathways vision,language,action] [--no-control] [--skip-evals trained,cut] [--work DIR]
        [--out JSON] [--note TEXT]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from vlatrim.utils.io import read_json, write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "smolvla_pathways.json"
QUICK_TASKS = "drawer-close,button-press-topdown,drawer-open,window-open"
LANGUAGE = "model.vlm_with_expert.vlm.model.text_model.layers"
VISION = "model.vlm_with_expert.vlm.model.vision_model.encoder.layers"
EXPERT = "model.vlm_with_expert.lm_expert.layers"


def _cli(args: list[str], done: Path) -> float:
    """Run a vlatrim verb as a user does, unless ``done`` exists; its wall-clock seconds (0 when skipped)."""
    if done.exists():
        return 0.0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlatrim", *args], check=True)
    return round(time.perf_counter() - t0, 1)


def _success(eval_dir: Path) -> dict:
    o = read_json(eval_dir / "eval.json")["overall"]
    return {"success": o["mean_success"], "successes": o["successes"], "episodes": o["episodes"],
            "wilson95": o["wilson95_pooled"]}


def _lowest(scores: list[float], k: int) -> list[int]:
    """The k blocks whose removal costs least (lowest drop-one score), ties by index."""
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=QUICK_TASKS)
    ap.add_argument("--demos", default=None, help="an existing dataset of the tasks (default: made here, 40 per task)")
    ap.add_argument("--demos-per-task", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3000, help="training steps of the new policy")
    ap.add_argument("--recover-steps", type=int, default=600, help="full-recovery steps of every cut")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--episodes", type=int, default=20, help="closed-loop episodes per task")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--text-layers", type=int, default=8)
    ap.add_argument("--vision-layers", type=int, default=6)
    ap.add_argument("--work", default="/tmp/vlatrim_smolvla_pathways")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--note", default="")
    ap.add_argument("--methods", default="full", help="recovery methods to compare on every cut (comma-separated)")
    ap.add_argument("--pathways", default="vision,language,action", help="pathways to cut (comma-separated)")
    ap.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                    help="train and evaluate the uncut policy for the recovery budget too")
    ap.add_argument("--skip-evals", default="", help="closed-loop evaluations to skip: trained, cut (comma-separated; "
                    "a comparison of recovery methods needs only the recovered policies)")
    args = ap.parse_args()
    from vlatrim.models.smolvla import SmolVLMSize, new_smolvla

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    demos = Path(args.demos) if args.demos else work / "demos"
    if not args.demos:
        seconds["demos"] = _cli(["data", "metaworld", "--tasks", args.tasks, "--episodes-per-task",
                                 str(args.demos_per_task), "--out", str(demos), "--workers", str(args.workers)],
                                demos / "meta" / "info.json")
    size = SmolVLMSize(num_hidden_layers=args.text_layers, vision_layers=args.vision_layers)
    new = work / "new"
    if not new.exists():
        new_smolvla(new, demos, size, chunk_size=4, n_action_steps=4, tokenizer_max_length=16,
                    self_attn_every_n_layers=-1)
    ev = ["--tasks", args.tasks, "--episodes", str(args.episodes), "--workers", str(args.workers)]
    trained = work / "trained"
    seconds["train"] = _cli(["recover", "--model", str(new), "--data", str(demos), "--out", str(trained), "--method",
                             "full", "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr",
                             str(args.lr)], trained / "recover.json")
    skip = {x.strip() for x in args.skip_evals.split(",") if x.strip()}
    if skip - {"trained", "cut"}:
        ap.error(f"--skip-evals takes trained and cut, not {', '.join(sorted(skip - {'trained', 'cut'}))}")
    if "trained" not in skip:
        seconds["eval_trained"] = _cli(["eval", "--policy", str(trained), "--out", str(work / "eval_trained"), *ev],
                                       work / "eval_trained" / "eval.json")
    analysis = work / "analysis"
    seconds["analyze"] = _cli(["analyze", "--model", str(trained), "--data", str(demos), "--out", str(analysis),
                               "--pathways", "language", "vision", "action", "--scorers", "drop_one"],
                              analysis / "analysis.json")
    drop_one = read_json(analysis / "analysis.json")["scorers"]["drop_one"]["scores"]
    cuts = {
        "vision": ["--pathway", "vision", "--drop-blocks",
                   ",".join(map(str, _lowest(drop_one[VISION], args.vision_layers // 2)))],
        "language": ["--drop-blocks", ",".join(map(str, _lowest(drop_one[LANGUAGE], args.text_layers // 2)))],
        "action": ["--pathway", "action", "--keep-partners", "--drop-blocks",
                   ",".join(str(i) for i in range(1, args.text_layers, 2))],
    }
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = {}
    for pathway in [p.strip() for p in args.pathways.split(",") if p.strip()]:
        argv = cuts[pathway]
        cut = work / f"cut_{pathway}"
        seconds[f"prune_{pathway}"] = _cli(["prune", "--model", str(trained), "--out", str(cut), *argv],
                                           cut / "prune.json")
        if "cut" not in skip:
            seconds[f"eval_cut_{pathway}"] = _cli(["eval", "--policy", str(cut), "--out",
                                                   str(work / f"eval_cut_{pathway}"), *ev],
                                                  work / f"eval_cut_{pathway}" / "eval.json")
        by_method = {}
        for method in methods:
            tag = pathway if method == "full" else f"{pathway}_{method}"  # full keeps the study's directory names
            rec = work / f"recovered_{tag}"
            teacher = ["--teacher", str(trained)] if method == "distill" else []
            seconds[f"recover_{tag}"] = _cli(["recover", "--model", str(cut), "--data", str(demos), "--out", str(rec),
                                              "--method", method, *teacher, "--steps", str(args.recover_steps),
                                              "--batch-size", str(args.batch_size), "--lr", str(args.lr)],
                                             rec / "recover.json")
            seconds[f"eval_recovered_{tag}"] = _cli(
                ["eval", "--policy", str(rec), "--out", str(work / f"eval_recovered_{tag}"), *ev],
                work / f"eval_recovered_{tag}" / "eval.json")
            summary = read_json(rec / "recover.json")
            by_method[method] = {"recovered": _success(work / f"eval_recovered_{tag}"),
                                 "steps_per_s": summary["budget"]["steps_per_s"],
                                 "trainable_params": summary["params"]["trainable"],
                                 "held_out": summary.get("held_out")}
        prune = read_json(cut / "prune.json")
        rows[pathway] = {"cut": argv, "kept_by_path": prune.get("kept_by_path", {LANGUAGE: prune["kept_blocks"]}),
                         "params_before": prune["params"]["before"], "params_after": prune["params"]["after"],
                         "after_cut": None if "cut" in skip else _success(work / f"eval_cut_{pathway}"),
                         "methods": by_method}
        if "full" in by_method:
            rows[pathway]["recovered"] = by_method["full"]["recovered"]
            rows[pathway]["recover_steps_per_s"] = by_method["full"]["steps_per_s"]
    # The control: the uncut policy trained for the same recovery budget, on the same episodes.
    control = work / "control"
    if args.control:
        seconds["control"] = _cli(["recover", "--model", str(trained), "--data", str(demos), "--out", str(control),
                                   "--method", "full", "--steps", str(args.recover_steps), "--batch-size",
                                   str(args.batch_size), "--lr", str(args.lr)], control / "recover.json")
        seconds["eval_control"] = _cli(["eval", "--policy", str(control), "--out", str(work / "eval_control"), *ev],
                                       work / "eval_control" / "eval.json")
    train = read_json(trained / "recover.json")
    result = {
        "benchmark": "smolvla_pathways",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "note": args.note,
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("out", "note")}, "size": asdict(size),
                     "layout": "cross_attn, self_attn_every_n_layers=-1"},
        "trained": {**({} if "trained" in skip else _success(work / "eval_trained")), "steps": train["steps"],
                    "steps_per_s": train["budget"]["steps_per_s"],
                    "final_loss": train.get("final_log", {}).get("loss"),
                    "params": train["params"]},
        "drop_one": drop_one,
        "control": _success(work / "eval_control") if args.control else None,
        "pathways": rows,
        "seconds": seconds,
    }
    write_json_atomic(Path(args.out), result)
    fmt = lambda d: "not evaluated" if not d or "success" not in d else f"{d['success']:.2f}"
    print(f"trained: {fmt(result['trained'])}" + (
        f"; control (+{args.recover_steps} steps): {fmt(result['control'])}" if args.control else ""))
    for p, r in rows.items():
        print(f"{p}: cut {fmt(r['after_cut'])} -> recovered " +
              ", ".join(f"{m} {fmt(v['recovered'])}" for m, v in r["methods"].items()))


if __name__ == "__main__":
    main()
