"""``vlatrim bench``: params, FLOPs, latency, control frequency and peak memory of checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from vlatrim.cli.registry import COMMANDS


@dataclass
class BenchCommand:
    """Measure params by component, FLOPs, latency (full + backbone-only), Hz and peak memory; write bench.json."""

    out: str
    """Output directory for bench.json (created if needed)."""
    model: tuple[str, ...] = ()
    """One or more checkpoint directories (a reference VLA, its pruned variants, or transformers models);
    ratios in bench.json are relative to the first."""
    shape: str | None = None
    """Instead of --model: a real-scale shape with random weights (openvla-7b, smolvla, pi0; see
    vlatrim.bench.shapes); benched at full depth and, with --keep / --drop-blocks, cut."""
    keep: int | None = None
    """With --shape: keep the first K layers (backbone and expert together)."""
    drop_blocks: str | None = None
    """With --shape: comma-separated layer indices to remove (backbone and expert together)."""
    time: bool = False
    """With --shape: time it even on the CPU when its weights exceed 2 GiB (default: params, FLOPs and
    roofline only there)."""
    dtype: str = "auto"
    """With --shape: auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16 or float16."""
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
    remeasure_peaks: bool = False
    """Measure the device's peak matmul FLOP/s and copy bandwidth again for the roofline (they are measured
    once per device, torch, dtype and threads and cached under $XDG_CACHE_HOME/vlatrim/roofline.json)."""

    def run(self) -> None:
        from vlatrim.bench.run import run_bench
        from vlatrim.cli.threads import apply_threads

        threads = apply_threads(self.threads)
        if self.shape is not None:
            self._run_shape(threads)
            return
        if self.keep is not None or self.drop_blocks is not None or self.time or self.dtype != "auto":
            from vlatrim.errors import VlatrimError

            raise VlatrimError("--keep, --drop-blocks, --time and --dtype go with --shape")
        res = run_bench(self.model, self.out, self.device, self.batch_size, self.compile, self.cuda_graphs,
                        self.warmup, self.repeats, self.seq_len, threads, remeasure_peaks=self.remeasure_peaks)
        print_table(res)
        for n in res["notes"]:
            print(f"note: {n}")
        print(f"wrote {self.out}/bench.json ({res['device']['type']}: {res['device']['name']})")

    def _run_shape(self, threads: int) -> None:
        from vlatrim.bench.shapes import run_shape_bench
        from vlatrim.errors import VlatrimError

        if self.model:
            raise VlatrimError("give --model or --shape, not both")
        try:
            drop = [int(x) for x in self.drop_blocks.split(",") if x.strip()] if self.drop_blocks else None
        except ValueError:
            raise VlatrimError(f"--drop-blocks takes comma-separated layer indices, got {self.drop_blocks!r}") from None
        res = run_shape_bench(self.shape, self.out, self.device, self.keep, drop, self.batch_size, self.compile,
                              self.cuda_graphs, self.warmup, self.repeats, True if self.time else None, self.dtype,
                              threads, self.remeasure_peaks)
        print_table(res)
        for n in res["notes"]:
            print(f"note: {n}")
        print(f"wrote {self.out}/bench.json ({res['device']['type']}: {res['device']['name']})")


def print_table(res: dict) -> None:
    """One line per model and timed mode of the full forward: median / p90 ms, roofline ms, measured / roofline, Hz."""
    print(f"{'model':24s} {'blocks':>6s} {'params':>12s} {'GFLOPs':>9s} {'mode':>10s} {'median ms':>10s} {'p90 ms':>9s} "
          f"{'roof ms':>8s} {'x roof':>7s} {'Hz':>8s} {'act/s':>8s}")
    for m in res["models"]:
        roof = m["roofline"]["full"]
        for mode, t in m["latency_ms"]["full"].items():
            head = (f"{m['name'][:24]:24s} {m['num_blocks']:6d} {m['params']['total']:12d} "
                    f"{m['flops']['counted']['full'] / 1e9:9.3f} {mode:>10s}")
            if "median_ms" not in t:
                print(f"{head} {'-':>10s} {'-':>9s} {roof['roofline_ms']:8.3f} {'-':>7s}  ({t.get('skipped', '')})")
                continue
            c = m["control"][mode]
            act = f"{c['actions_per_s']:8.1f}" if c.get("actions_per_s") else f"{'-':>8s}"
            print(f"{head} {t['median_ms']:10.2f} {t['p90_ms']:9.2f} {roof['roofline_ms']:8.3f} "
                  f"{roof['measured_over_roofline'][mode]:7.1f} {c['query_hz']:8.2f} {act}")
    if res["models"]:
        p = res["models"][0]["roofline"]["peaks"]
        print(f"roofline: peak matmul {p['matmul_tflops'] * 1e3:.1f} GFLOP/s, copy {p['bandwidth_gb_s']:.1f} GB/s "
              f"({'cached' if p['from_cache'] else 'measured now'}: {p['key']}); bytes moved = weights read once per forward")


COMMANDS.register("bench")(BenchCommand)
