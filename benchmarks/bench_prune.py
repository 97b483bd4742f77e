"""Does depth pruning buy the speed it promises? Backbone latency after removing 50% and 75% of the
blocks, against the ideal FLOP-proportional speedup (and, for comparison, halving every block's heads
and MLP channels).

For each backbone shape (random weights from a transformers config, no download): build the model,
prune copies with ``vlatrim.prune`` (keep-first), count forward FLOPs with
``torch.utils.flop_counter.FlopCounterMode`` (ideal speedup = FLOPs before / FLOPs after), and time one
forward pass of the backbone (the base model: embeddings, blocks, final norm; no LM head) on a fixed
prompt. Timings are interleaved round-robin over the variants (so drift on a shared machine hits every
variant alike), after warm-up, and the median per variant is reported. Target: measured / ideal >= 0.9.

Usage: PYTHONPATH=src python benchmarks/bench_prune.py [--threads N] [--rounds R] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers as tf
from torch.utils.flop_counter import FlopCounterMode

from vlatrim.bench.latency import measure_latency
from vlatrim.bench.params import count_params
from vlatrim.models.adapters import locate_backbone
from vlatrim.prune import apply_plan
from vlatrim.prune.methods.heads import heads
from vlatrim.prune.methods.keep_first import keep_first
from vlatrim.prune.methods.mlp import mlp
from vlatrim.utils.io import write_json_atomic

BLOCKS = 8
SHAPES = {
    # Llama-style decoder (GQA 8 query / 4 KV heads), a scaled-down OpenVLA backbone shape.
    "llama-8L-h512": (tf.LlamaModel, tf.LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=BLOCKS,
                                                     num_attention_heads=8, num_key_value_heads=4, vocab_size=1000,
                                                     max_position_embeddings=512)),
    # BERT encoder with MiniLM-L6's widths (the reference VLA's default backbone), 8 blocks.
    "bert-8L-h384": (tf.BertModel, tf.BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=BLOCKS,
                                                 num_attention_heads=12, vocab_size=1000, max_position_embeddings=512)),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flops(model: torch.nn.Module, ids: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=ids)
    return int(fc.get_total_flops())


def bench_shape(name: str, cls: type, cfg: object, seq: int, rounds: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base = cls(cfg).eval()
    ids = torch.randint(5, 1000, (1, seq))
    variants = {"full": base}
    for frac in (0.5, 0.75):
        m = copy.deepcopy(base)
        keep = BLOCKS - int(round(frac * BLOCKS))
        res = apply_plan(m, keep_first(locate_backbone(m), keep))
        variants[f"{int(frac * 100)}%"] = res.model
    # Width, for comparison: half the heads (whole KV groups) and half the MLP channels in every block.
    m = copy.deepcopy(base)
    h = locate_backbone(m)
    att = h.layouts[0].attention
    plan = heads(h, att.num_heads // 2, mode="kv" if att.num_kv_heads > 1 else "auto")
    variants["width-50%"] = apply_plan(m, plan.merge(mlp(h, 0.5)), h).model
    info = {k: {"blocks": locate_backbone(m).num_blocks, "params": count_params(m), "flops": flops(m, ids)}
            for k, m in variants.items()}
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for m in variants.values():  # warm-up: allocator, caches, lazy init
        measure_latency(lambda m=m: m(input_ids=ids), warmup=warmup, repeats=1)
    for _ in range(rounds):  # interleaved: drift on a shared CPU lands on every variant alike
        for k, m in variants.items():
            samples[k].extend(measure_latency(lambda m=m: m(input_ids=ids), warmup=0, repeats=3).samples_ms)
    full_ms = statistics.median(samples["full"])
    out = {"class": cls.__name__, "seq_len": seq, "batch": 1, "variants": {}}
    for k in variants:
        med = statistics.median(samples[k])
        ideal = info["full"]["flops"] / info[k]["flops"]
        measured = full_ms / med
        out["variants"][k] = {
            **info[k], "median_ms": round(med, 3), "min_ms": round(min(samples[k]), 3), "n_timed": len(samples[k]),
            "ideal_speedup": round(ideal, 3), "speedup": round(measured, 3),
            "speedup_vs_ideal": round(measured / ideal, 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least disturbed on a shared machine)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (3 timed calls each)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=256, help="prompt length (tokens)")
    ap.add_argument("--shared-machine", action=argparse.BooleanOptionalAction, default=False,
                    help="record that other processes were using the CPU during the run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    results = {name: bench_shape(name, cls, cfg, args.seq, args.rounds, args.warmup) for name, (cls, cfg) in SHAPES.items()}
    worst = min(v["speedup_vs_ideal"] for r in results.values() for k, v in r["variants"].items() if k in ("50%", "75%"))
    report = {
        "benchmark": "prune: backbone latency after removing 50% / 75% of blocks vs ideal FLOP-proportional speedup",
        "device": {"type": "cpu", "name": cpu_name(), "logical_cpus": os.cpu_count(), "torch_threads": args.threads},
        "shared_machine": args.shared_machine,
        "note": ("CPU shared with other engineers' processes while this ran; the lead re-runs on a quiet machine"
                 if args.shared_machine else "quiet machine"),
        "torch": torch.__version__, "transformers": tf.__version__,
        "method": "keep-first pruning via vlatrim.prune.apply_plan; eager fp32 forward of the base model "
                  "(no LM head), batch 1; ideal = FLOPs(full) / FLOPs(pruned) by torch FlopCounterMode; "
                  f"{args.warmup} warm-up calls, then {args.rounds} interleaved rounds x 3 timed calls; medians",
        "target": "speedup_vs_ideal >= 0.9 at 50% and 75% of blocks removed (width-50%: half the heads and "
                  "MLP channels of every block, reported for comparison, not part of the target)",
        "worst_speedup_vs_ideal": worst,
        "target_met": worst >= 0.9,
        "results": results,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - t0, 1),
    }
    write_json_atomic(args.out, report)
    for name, r in results.items():
        for k, v in r["variants"].items():
            print(f"{name:14s} {k:>5s}: {v['blocks']} blocks {v['median_ms']:8.2f} ms  speedup {v['speedup']:.2f}x "
                  f"(ideal {v['ideal_speedup']:.2f}x, ratio {v['speedup_vs_ideal']:.2f})")
    print(f"worst ratio to ideal: {worst:.3f} (target >= 0.9) -> {args.out}")


if __name__ == "__main__":
    main()
