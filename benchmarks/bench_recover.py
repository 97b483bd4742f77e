"""Recovery fine-tuning throughput: samples/s of full / LoRA / distillation steps on the reference VLA.

CPU part (always): the reference VLA as ``vlatrim train --preset quick`` builds it (pretrained
MiniLM-L6 backbone, 96 px, 9 image tokens, chunk of 4), unpruned and with 3 of its 6 blocks removed
(``PrunePlan(drop_blocks=[1, 3, 5])``). One step is exactly what the recovery loop runs: the method's
``loss`` (distillation includes the frozen teacher's forward), backward, gradient clipping, AdamW on
the method's trainable parameters. Variants are interleaved round by round so a shared machine's
load hits them alike; warm-up steps are dropped; medians are reported, with ratios to full
fine-tuning of the pruned model measured in the same run.

GPU part (only when CUDA is available; it was NOT run in the session that wrote this script, which had
no GPU): full fine-tuning steps of a VLA around a random-weight ~1.1B-parameter Llama-shaped decoder
in bf16 autocast, and its model FLOPs utilisation,
MFU = 6 * (non-embedding backbone parameters) * (backbone tokens per step) / step time / peak bf16 FLOP/s
(attention score FLOPs left out: at ~50 tokens per sample they are < 1% of the total).

Drop-then-recovery (``--drop-then-recovery WORKDIR``, CPU, minutes to an hour): the CLI end to end
in WORKDIR, each step skipped when its output exists (so an interrupted study continues): demos for
``--dtr-tasks``, ``vlatrim train --preset quick`` for ``--dtr-base-steps``, ``vlatrim prune
--keep-first 3`` (50% of MiniLM's 6 blocks), recovery with the budget of the base's last 20% of steps
(``vlatrim recover --method full``), the same budget spent on the unpruned base, and ``vlatrim eval``
of all four; the summary goes under ``drop_then_recovery`` in the results file.

    PYTHONPATH=src python benchmarks/bench_recover.py [--steps 6] [--warmup 2] [--rounds 2] [--threads 1]
    PYTHONPATH=src python benchmarks/bench_recover.py --skip-throughput --drop-then-recovery runs/dtr
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from vlatrim.models.reference import ReferenceVLA, VLAConfig
from vlatrim.prune import PrunePlan, apply_plan
from vlatrim.train.presets import TRAIN_PRESETS
from vlatrim.train.recovery import RECOVERY_METHODS, LoraSettings, RecoverySettings
from vlatrim.train.trainer import default_param_groups
from vlatrim.utils.io import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "recover.json"


def make_batch(vla: ReferenceVLA, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s, T = vla.config.image_size, vla.config.chunk_size
    ids, mask = vla.tokenize(["open the drawer"] * batch_size)
    batch = {"image": torch.randint(0, 256, (batch_size, s, s, 3), generator=g, dtype=torch.uint8),
             "state": torch.randn(batch_size, 4, generator=g), "input_ids": ids, "attention_mask": mask,
             "action": torch.rand(batch_size, T, 4, generator=g) * 2 - 1,
             "action_mask": torch.ones(batch_size, T, dtype=torch.bool)}
    return {k: v.to(device) for k, v in batch.items()}


class Variant:
    """One method on one model, with its optimizer: ``step()`` is one recovery-loop optimizer step."""

    def __init__(self, name: str, method: str, student: ReferenceVLA, teacher: ReferenceVLA | None,
                 device: torch.device, bf16: bool) -> None:
        self.name, self.method_name, self.bf16 = name, method, bf16
        settings = RecoverySettings(method=method, lora=LoraSettings(rank=16, alpha=32))
        self.method = RECOVERY_METHODS.get(method)(settings)
        if teacher is not None:
            # Default distillation (task + action terms; no hidden alignment, so no block pairing needed).
            self.method.attach_teacher(teacher.to(device), student, None)
        self.model = self.method.prepare(student).to(device).train()
        self.blocks = student.backbone.config.num_hidden_layers
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.opt = torch.optim.AdamW(default_param_groups(self.model, 0.01), lr=1e-4)
        self.batch = make_batch(student, BATCH, device)
        self.device = device
        self.times: list[float] = []

    def step(self) -> float:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.method.loss(self.model, self.batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t


BATCH = 32


def quick_vla(image_size: int = 96) -> ReferenceVLA:
    p = TRAIN_PRESETS.get("quick")()
    torch.manual_seed(0)
    vla = ReferenceVLA.from_backbone(VLAConfig(image_size=image_size, **p.model), p.backbone)
    vla.set_normalization({k: {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
                           for k in ("observation.state", "action")})
    return vla


def bench_cpu(steps: int, warmup: int, rounds: int) -> list[dict]:
    dev = torch.device("cpu")
    base = quick_vla()
    pruned = copy.deepcopy(base)
    apply_plan(pruned, PrunePlan(drop_blocks=[1, 3, 5]))
    variants = [Variant("unpruned/full", "full", copy.deepcopy(base), None, dev, False),
                Variant("pruned-50%/full", "full", copy.deepcopy(pruned), None, dev, False),
                Variant("pruned-50%/lora", "lora", copy.deepcopy(pruned), None, dev, False),
                Variant("pruned-50%/distill", "distill", copy.deepcopy(pruned), copy.deepcopy(base), dev, False)]
    for v in variants:
        for _ in range(warmup):
            v.step()
    for _ in range(rounds):
        for v in variants:
            v.times += [v.step() for _ in range(steps)]
    ref = statistics.median(variants[1].times)
    rows = []
    for v in variants:
        med = statistics.median(v.times)
        rows.append({"variant": v.name, "method": v.method_name, "blocks": v.blocks, "batch_size": BATCH,
                     "trainable_params": v.trainable, "device": "cpu", "precision": "fp32",
                     "median_s_per_step": med, "min_s_per_step": min(v.times), "max_s_per_step": max(v.times),
                     "samples_per_s": BATCH / med, "time_vs_pruned_full": med / ref, "timed_steps": len(v.times)})
        print(f"cpu {v.name:20s} {med:.3f} s/step  {BATCH / med:6.1f} samples/s  x{med / ref:.2f} of pruned/full",
              flush=True)
    return rows


# ~1.07B non-embedding parameters: 16 blocks x (4 x 2048^2 attention + 3 x 2048 x 8192 MLP).
GPU_DECODER = dict(model_type="llama", vocab_size=30522, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
                   num_key_value_heads=16, intermediate_size=8192, max_position_embeddings=512)


def bench_gpu(steps: int, warmup: int, peak_tflops: float, device: str = "cuda", cfg: dict | None = None) -> dict:
    """Full fine-tuning of a VLA around a ~1.1B random Llama decoder, bf16 autocast, and its MFU.

    ``device`` / ``cfg`` exist so the path can be smoke-tested on a CPU with a tiny decoder.
    """
    from vlatrim.models.backbones import Backbone, build_backbone_from_config, default_tokenizer

    dev = torch.device(device)
    cfg = cfg or GPU_DECODER
    torch.manual_seed(0)
    backbone = Backbone(model=build_backbone_from_config(cfg), tokenizer=default_tokenizer(), name="llama-random")
    vla = ReferenceVLA.from_backbone(VLAConfig(image_size=96, chunk_size=4, max_text_tokens=12), backbone)
    vla.set_normalization({k: {"mean": [0.0] * 4, "std": [1.0] * 4, "min": [-1.0] * 4, "max": [1.0] * 4}
                           for k in ("observation.state", "action")})
    global BATCH
    BATCH = 64
    v = Variant("random-llama-decoder/full", "full", vla, None, dev, True)
    for _ in range(warmup):
        v.step()
    v.times = [v.step() for _ in range(steps)]
    med = statistics.median(v.times)
    emb = vla.backbone.get_input_embeddings().weight.numel()
    n_body = sum(p.numel() for p in vla.backbone.parameters()) - emb
    seq = vla.config.num_image_tokens + 1 + vla.config.max_text_tokens + vla.config.chunk_size
    flops = 6.0 * n_body * seq * BATCH
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    return {"variant": v.name, "device": name, "precision": "bf16 autocast",
            "backbone_params_non_embedding": n_body, "sequence_length": seq, "batch_size": BATCH,
            "median_s_per_step": med, "samples_per_s": BATCH / med,
            "model_tflops_per_s": flops / med / 1e12, "peak_tflops_assumed": peak_tflops,
            "mfu": flops / med / (peak_tflops * 1e12)}


def drop_then_recovery(work: Path, tasks: str, demos: int, base_steps: int, episodes: int, max_steps: int) -> dict:
    """Run (or continue) the drop-then-recovery study in ``work`` through the CLI and summarise it."""
    from vlatrim.utils.io import read_json

    budget = max(1, round(0.2 * base_steps))  # the base's last 20% of steps
    work.mkdir(parents=True, exist_ok=True)
    vlatrim = [sys.executable, "-m", "vlatrim"]
    steps = [
        ("data", ["data", "metaworld", "--tasks", tasks, "--episodes-per-task", str(demos), "--out", "data",
                  "--workers", "2"]),
        ("base", ["train", "--data", "data", "--out", "base", "--preset", "quick", "--steps", str(base_steps),
                  "--checkpoint-every", "100", "--device", "cpu"]),
        ("half", ["prune", "--model", "base", "--out", "half", "--keep-first", "3"]),
        ("half-full", ["recover", "--model", "half", "--data", "data", "--out", "half-full", "--steps", str(budget),
                       "--batch-size", "32", "--lr", "3e-4", "--device", "cpu", "--checkpoint-every", "30"]),
        ("base-more", ["recover", "--model", "base", "--data", "data", "--out", "base-more", "--steps", str(budget),
                       "--batch-size", "32", "--lr", "3e-4", "--device", "cpu", "--checkpoint-every", "30"]),
    ] + [(f"eval-{m}", ["eval", "--policy", m, "--tasks", tasks, "--episodes", str(episodes), "--max-steps",
                        str(max_steps), "--workers", "2", "--out", f"eval-{m}", "--device", "cpu"])
         for m in ("base", "half", "half-full", "base-more")]
    for out, args in steps:
        done = work / out / ("eval.json" if out.startswith("eval-") else "config.json" if out != "data" else "meta")
        if not done.exists():
            print("running: vlatrim", " ".join(args), flush=True)
            subprocess.run(vlatrim + args, cwd=work, check=True)
    ev = {m: read_json(work / f"eval-{m}" / "eval.json") for m in ("base", "half", "half-full", "base-more")}
    success = {m: e["overall"]["mean_success"] for m, e in ev.items()}
    rec = {m: read_json(work / m / "recover.json") for m in ("half-full", "base-more")}
    train = read_json(work / "base" / "train.json")
    return {
        "tasks": tasks, "demos_per_task": demos, "eval_episodes_per_task": episodes, "eval_max_steps": max_steps,
        "base": {"steps": train["steps"], "batch_size": train["settings"]["trainer"]["batch_size"],
                 "held_out_l1": train.get("held_out", {}).get("l1")},
        "recovery_budget": {m: r["budget"] for m, r in rec.items()},
        "held_out_l1": {m: r.get("held_out", {}).get("l1") for m, r in rec.items()},
        "mean_success": success,
        "per_task_success": {m: {t: v["success_rate"] for t, v in e["per_task"].items()} for m, e in ev.items()},
        "recovered_over_base": (success["half-full"] / success["base"]) if success["base"] else None,
        "recovered_over_base_same_budget": (success["half-full"] / success["base-more"]) if success["base-more"] else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H100 SXM: 989)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    ap.add_argument("--skip-throughput", action="store_true", help="keep the throughput results already in the file")
    ap.add_argument("--drop-then-recovery", type=Path, default=None, metavar="WORKDIR")
    ap.add_argument("--dtr-tasks", default="drawer-close,button-press-topdown")
    ap.add_argument("--dtr-demos", type=int, default=20, help="expert demos per task")
    ap.add_argument("--dtr-base-steps", type=int, default=300)
    ap.add_argument("--dtr-episodes", type=int, default=10, help="evaluation episodes per task")
    ap.add_argument("--dtr-max-steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.skip_throughput:
        from vlatrim.utils.io import read_json

        result = read_json(OUT, "benchmark results")
        if args.drop_then_recovery is not None:
            result["drop_then_recovery"] = drop_then_recovery(
                args.drop_then_recovery.resolve(), args.dtr_tasks, args.dtr_demos, args.dtr_base_steps,
                args.dtr_episodes, args.dtr_max_steps)
            result["drop_then_recovery"]["note"] = args.note
        write_json_atomic(OUT, result)
        print(f"wrote {OUT}")
        return
    result = {
        "benchmark": "recovery training step (method loss + backward + clip + AdamW), batch 32, 96 px",
        "model": "reference VLA, quick preset architecture (MiniLM-L6 pretrained, 9 image tokens, chunk 4); "
                 "pruned = blocks 1, 3, 5 removed; distill teacher = the unpruned model",
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(), "note": args.note,
        "cpu_results": bench_cpu(args.steps, args.warmup, args.rounds),
        "load_average_at_end": os.getloadavg(),
        "gpu_result": None,
    }
    if torch.cuda.is_available():
        result["gpu_result"] = bench_gpu(10, 3, args.peak_tflops)
        print(f"gpu {result['gpu_result']['variant']}: MFU {result['gpu_result']['mfu']:.1%}")
    write_json_atomic(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
