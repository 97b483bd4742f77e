"""Training throughput of the reference VLA: optimizer steps/s (and samples/s) per preset and device.

One step = forward + backward + gradient clipping + AdamW update (the trainer's fused AdamW) on a
batch of synthetic 96 px frames (the data path is an in-memory gather, negligible next to the
model). Warm-up steps are dropped; the median of the timed steps is reported. CUDA runs use bf16
autocast (what ``vlatrim train`` does there) and synchronize around every step; CPU runs are timed
in fp32 and, on a CPU with native bf16 (AVX512-BF16/AMX), in bf16 autocast too (what the quick
preset uses there), in one run. Results go to benchmarks/results/train.json.

    PYTHONPATH=src python benchmarks/bench_train.py [--steps 10] [--warmup 3] [--presets quick default]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vlatrim.models.reference import ReferenceVLA, VLAConfig
from vlatrim.train.config import TrainerConfig
from vlatrim.train.presets import TRAIN_PRESETS
from vlatrim.train.trainer import default_param_groups, make_adamw
from vlatrim.utils.hardware import cpu_has_native_bf16
from vlatrim.utils.io import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "train.json"


def make_batch(vla: ReferenceVLA, batch_size: int, image_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids, mask = vla.tokenize(["open the drawer"] * batch_size)
    T = vla.config.chunk_size
    batch = {"image": torch.randint(0, 256, (batch_size, image_size, image_size, 3), generator=g, dtype=torch.uint8),
             "state": torch.randn(batch_size, 4, generator=g), "input_ids": ids, "attention_mask": mask,
             "action": torch.rand(batch_size, T, 4, generator=g) * 2 - 1,
             "action_mask": torch.ones(batch_size, T, dtype=torch.bool)}
    return {k: v.to(device) for k, v in batch.items()}


def bench(preset: str, device: torch.device, steps: int, warmup: int, image_size: int = 96,
          bf16: bool = False) -> dict:
    p = TRAIN_PRESETS.get(preset)()
    torch.manual_seed(0)
    vla = ReferenceVLA.from_backbone(VLAConfig(image_size=image_size, **p.model), p.backbone).to(device).train()
    if not p.train_word_embeddings:  # as `vlatrim train` does for this preset
        vla.backbone.get_input_embeddings().weight.requires_grad_(False)
    bs = p.trainer["batch_size"]
    batch = make_batch(vla, bs, image_size, device)
    params = [q for q in vla.parameters() if q.requires_grad]
    opt = make_adamw(default_param_groups(vla, 0.01), TrainerConfig(lr=1e-4))
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast:
            loss = vla(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"preset": preset, "backbone": p.backbone, "blocks": vla.backbone.config.num_hidden_layers,
            "image_size": image_size, "image_tokens": vla.config.num_image_tokens,
            "sequence_length": vla.config.num_image_tokens + 1 + vla.config.max_text_tokens + vla.config.chunk_size,
            "batch_size": bs, "parameters": sum(q.numel() for q in vla.parameters()),
            "trainable_parameters": sum(q.numel() for q in params),
            "device": device.type, "precision": "bf16 autocast" if bf16 else "fp32",
            "median_s_per_step": med, "min_s_per_step": min(times), "max_s_per_step": max(times),
            "steps_per_s": 1.0 / med, "samples_per_s": bs / med, "timed_steps": steps, "warmup_steps": warmup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--presets", nargs="+", default=["quick", "default"])
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared')")
    args = ap.parse_args()
    runs = [(torch.device("cpu"), False)] + ([(torch.device("cpu"), True)] if cpu_has_native_bf16() else [])
    runs += [(torch.device("cuda"), True)] if torch.cuda.is_available() else []
    rows = []
    for dev, bf16 in runs:
        for preset in args.presets:
            r = bench(preset, dev, args.steps, args.warmup, bf16=bf16)
            print(f"{dev.type:4s} {r['precision']:13s} {preset:8s} {r['median_s_per_step']:.3f} s/step  {r['steps_per_s']:.2f} steps/s  "
                  f"{r['samples_per_s']:.1f} samples/s", flush=True)
            rows.append(r)
    result = {
        "benchmark": "reference VLA training step (forward + backward + clip + AdamW)",
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "note": args.note, "results": rows,
    }
    write_json_atomic(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
