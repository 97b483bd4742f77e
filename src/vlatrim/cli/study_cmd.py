"""``vlatrim study``: the whole drop-then-recovery sweep -> study.json, plots, report.html."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from vlatrim.cli.registry import COMMANDS
from vlatrim.cli.threads import apply_threads
from vlatrim.errors import VlatrimError
from vlatrim.study.presets import study_preset_help


def _items(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Flag values given space- or comma-separated (``--ratios 0.5,0.75`` == ``--ratios 0.5 0.75``)."""
    if values is None:
        return None
    return tuple(x for v in values for x in v.replace(" ", "").split(",") if x)


def _floats(values: tuple[str, ...] | None, flag: str) -> tuple[float, ...] | None:
    items = _items(values)
    try:
        return None if items is None else tuple(float(x) for x in items)
    except ValueError:
        raise VlatrimError(f"{flag} takes numbers such as 0.5,0.75; got {' '.join(values or ())!r}") from None


@dataclass
class StudyCommand:
    """Demos -> train base -> analyze -> per ratio: prune, eval, recover, eval -> bench; study.json + report.html."""

    out: str
    """Study directory (new or empty; or a previous study's with --resume)."""
    preset: Annotated[str, tyro.conf.arg(help=study_preset_help())] = "demo"
    data: str | None = None
    """Use this LeRobot v3 dataset instead of generating Meta-World demonstrations (the pretraining data
    under --protocol transfer)."""
    tasks: tuple[str, ...] | None = None
    """Meta-World tasks or groups, e.g. drawer-close,reach or mt10 / easy. Default: the preset's."""
    protocol: Literal["deployment", "transfer"] | None = None
    """deployment: train, prune, recover and evaluate on --tasks. transfer (the paper's protocol): pretrain
    on --tasks, then score, prune, fine-tune (pruned and unpruned, same budget) and evaluate on
    --target-tasks. Default: the preset's (deployment)."""
    target_tasks: tuple[str, ...] | None = None
    """--protocol transfer: the new tasks, none of them in --tasks (e.g. door-close,handle-press)."""
    target_data: str | None = None
    """--protocol transfer: a LeRobot v3 dataset of the target tasks instead of generating it."""
    ratios: tuple[str, ...] | None = None
    """Fractions of the language blocks to remove, e.g. 0.5,0.75 (or 0.5 0.75). Default: the preset's."""
    scorer: tuple[str, ...] | None = None
    """Block scorer(s) whose ranking decides which blocks go, e.g. drop_one,gateprobe (drop_one, gateprobe,
    block_influence, angular, cka, gate_first_order). Default: the preset's."""
    methods: tuple[str, ...] | None = None
    """Recovery methods, e.g. full,lora (full, lora, distill). Default: the preset's."""
    episodes_per_task: int | None = None
    """Demonstrations per task. Default: the preset's."""
    train_steps: int | None = None
    """Optimizer steps of the base model. Default: the preset's."""
    recover_steps: int | None = None
    """Optimizer steps of each recovery run (and of the unpruned control). Default: the preset's."""
    recover_budgets: tuple[str, ...] | None = None
    """Recovery budgets as fractions of the base's training steps, comma-separated (e.g. 0.1,0.2,0.5,1.0):
    every pruned variant and the unpruned control are fine-tuned at each, and the report plots quality
    against budget, step-matched and FLOP-matched. Default: the preset's (one budget of --recover-steps)."""
    quantize: tuple[str, ...] | None = None
    """Quantization schemes, comma-separated (int8-weight, int8-dynamic, int4-weight; see `vlatrim quantize`):
    the base, every pruned variant and every fine-tuned model are also quantized, evaluated and benched, and
    the report adds success against latency and weight memory (a Pareto plot). Default: the preset's (none)."""
    eval_episodes: int | None = None
    """Closed-loop episodes per task. Default: the preset's."""
    closed_loop: bool | None = None
    """Measure closed-loop success in Meta-World: --closed-loop True / False (False: offline action error
    only, no rendering). Default: the preset's (True except tiny)."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """Where everything runs. Default: the preset's."""
    resume: bool = False
    """Continue the study in --out: finished stages are skipped (settings must match)."""

    threads: int | None = None
    """torch CPU threads for every stage. Default: the cores free as each stage starts (with another job keeping
    one of 2 cores busy that is 1 thread, which trains faster there than torch's default of 2)."""

    def run(self) -> None:
        import os

        n = apply_threads(self.threads)
        fixed = self.threads is not None or os.environ.get("OMP_NUM_THREADS") is not None
        from vlatrim.study.presets import resolve_study_config
        from vlatrim.study.run import run_study

        cfg = resolve_study_config(self.preset, dict(
            tasks=_items(self.tasks), protocol=self.protocol, target_tasks=_items(self.target_tasks), ratios=_floats(self.ratios, "--ratios"), scorers=_items(self.scorer),
            methods=_items(self.methods),
            episodes_per_task=self.episodes_per_task, train_steps=self.train_steps, recover_steps=self.recover_steps,
            recover_budgets=_floats(self.recover_budgets, "--recover-budgets"), quantize=_items(self.quantize),
            eval_episodes=self.eval_episodes, closed_loop=self.closed_loop, device=self.device))
        for d in (self.data, self.target_data):
            if d is not None:  # a damaged dataset is refused before the study writes anything
                from vlatrim.data.lerobot import LeRobotDataset

                LeRobotDataset(d)
        study = run_study(cfg, self.out, data=self.data, resume=self.resume, target_data=self.target_data,
                          threads=n if fixed else "auto")
        print(summary_table(study))
        print(f"wrote {self.out}/study.json and {self.out}/report.html")


def summary_table(study: dict) -> str:
    """A plain-text table of the study's variants (what the terminal shows at the end)."""
    lines = [f"{'variant':28s} {'blocks':>6s} {'success':>8s} {'L1':>8s} {'params':>11s} {'full ms':>8s}"]
    for r in study["variants"]:
        sr = "-" if r["success_rate"] is None else f"{r['success_rate']:.2f}"
        l1 = "-" if r["offline_l1"] is None else f"{r['offline_l1']:.4f}"
        ms = "-" if r["latency_full_ms"] is None else f"{r['latency_full_ms']:.2f}"
        pt = "-" if r["params_total"] is None else f"{r['params_total']:,}"
        lines.append(f"{r['name'][:28]:28s} {r['blocks_kept']:6d} {sr:>8s} {l1:>8s} {pt:>11s} {ms:>8s}")
    lines += [f"note: {n}" for n in study["notes"]]
    return "\n".join(lines)


COMMANDS.register("study")(StudyCommand)
