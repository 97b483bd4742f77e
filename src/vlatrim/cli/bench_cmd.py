"""``vlatrim bench``: params, FLOPs, latency, control frequency and peak memory of checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from vlatrim.cli.registry import COMMANDS


@dataclass
class BenchCommand:
    """Measure params by component, FLOPs, latency (full + backbone-only), Hz and peak memory; write bench.json."""

    model: tuple[str, ...]
    """One or more checkpoint directories (a reference VLA, its pruned variants, or transformers models);
    ratios in bench.json are relative to the first."""
    out: str
    """Output directory for bench.json (created if needed)."""
    device: str = "cpu"
    """cpu, cuda, cuda:N or auto (CUDA when available)."""
    batch_size: int = 1
    """Observations per forward (1 = one robot)."""
    compile: bool = False
    """Also time torch.compile (inductor); a failure to compile is recorded, not fatal."""
    cuda_graphs: bool = False
    """Also time CUDA-graph replay (GPU only; recorded as skipped on the CPU)."""
    warmup: int = 5
    """Untimed calls before each timing."""
    repeats: int = 20
    """Timed calls per timing; medians are reported."""
    seq_len: int = 64
    """Tokens per sequence for transformers text models (a VLA's sequence comes from its config)."""
    threads: int | None = None
    """torch CPU threads. Default: the cores free when the command starts (bench.json records the count)."""

    def run(self) -> None:
        from vlatrim.bench.run import run_bench
        from vlatrim.cli.threads import apply_threads

        threads = apply_threads(self.threads)
        res = run_bench(self.model, self.out, self.device, self.batch_size, self.compile, self.cuda_graphs,
                        self.warmup, self.repeats, self.seq_len, threads)
        print(f"{'model':24s} {'blocks':>6s} {'params':>10s} {'GFLOPs':>8s} {'full ms':>9s} {'backbone ms':>11s} {'Hz':>8s}")
        for m in res["models"]:
            full = m["latency_ms"]["full"]["eager"]["median_ms"]
            bb = m["latency_ms"]["backbone"]["eager"]["median_ms"]
            print(f"{m['name'][:24]:24s} {m['num_blocks']:6d} {m['params']['total']:10d} "
                  f"{m['flops']['counted']['full'] / 1e9:8.3f} {full:9.2f} {bb:11.2f} {1e3 / full:8.1f}")
        for n in res["notes"]:
            print(f"note: {n}")
        print(f"wrote {self.out}/bench.json ({res['device']['type']}: {res['device']['name']})")


COMMANDS.register("bench")(BenchCommand)
