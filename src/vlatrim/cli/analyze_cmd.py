"""``vlatrim analyze``: importance scores for blocks, heads, MLP channels and vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlatrim.analyze.base import PATHWAYS
from vlatrim.analyze.run import DEFAULT_SCORERS
from vlatrim.cli.registry import COMMANDS
from vlatrim.cli.threads import apply_threads


@dataclass
class AnalyzeCommand:
    """Score a model's blocks / heads / channels / vocabulary on a dataset; write analysis.json + plots."""

    model: str
    """A vlatrim VLA checkpoint directory (action loss) or a transformers causal-LM directory
    (next-token loss on the dataset's instructions)."""
    data: str
    """A LeRobotDataset v3 directory; a VLA is scored on its held-out episodes."""
    out: str
    """Output directory (must not exist): analysis.json, blocks.png, angular_spans.png, pathways.png."""
    scorers: tuple[str, ...] = DEFAULT_SCORERS
    """Scorers to run (drop-one runs first and is the reference for every block ranking)."""
    batches: int = 8
    """Number of calibration batches."""
    batch_size: int = 16
    """Samples per calibration batch."""
    pathways: tuple[str, ...] = PATHWAYS
    """Block lists the block scorers cover (language, vision, action; those the model has)."""
    angular_span: int = 1
    """Span n of blocks whose angular distance is the angular scorer's per-block score."""
    angular_position: Literal["all", "last"] = "all"
    """Positions the angular distance averages over: all real (non-padding) tokens, or each sample's last
    real token (Gromov et al.)."""
    blocks_path: str | None = None
    """Dotted path of the backbone's block list, when detection fails (see vlatrim inspect)."""
    seed: int = 0
    """Which held-out samples form the calibration batches."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:N or auto."""
    trust_remote_code: bool = False
    """Run the modeling code a transformers model directory ships (configuration_*.py / modeling_*.py named by
    auto_map in config.json, as OpenVLA's does). Off by default: such a model is refused, and no code from it runs."""

    threads: int | None = None
    """torch CPU threads. Default: the cores free when the command starts (with another job keeping one of
    2 cores busy that is 1 thread, which trains faster there than torch's default of 2)."""

    def run(self) -> None:
        apply_threads(self.threads)
        from vlatrim.analyze.api import analyze
        from vlatrim.errors import VlatrimError

        if self.angular_span < 1:
            raise VlatrimError(f"--angular-span {self.angular_span} is not valid; valid: a block count >= 1 (at most the "
                               "number of blocks in a scored block list)")
        res = analyze(self.model, self.data, self.out, self.scorers, self.batches, self.batch_size, self.pathways,
                      self.blocks_path, self.seed, {"angular": {"span": self.angular_span, "position": self.angular_position}}
                      if "angular" in self.scorers else None, self.device,
                      trust_remote_code=self.trust_remote_code)
        for name, r in res["scorers"].items():
            rho = r.get("spearman_vs_drop_one") or {}
            rho_s = ", ".join(f"{v:.2f}" if v is not None else "n/a" for v in rho.values())
            print(f"{name:18s} {r['unit']:8s} {r['seconds']:8.2f} s" + (f"  Spearman vs drop-one {rho_s}" if rho else ""))
        print(f"wrote {self.out}/analysis.json ({', '.join(res['plots'])})")


COMMANDS.register("analyze")(AnalyzeCommand)
