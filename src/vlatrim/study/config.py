"""The settings of one drop-then-recovery study (one dataclass, every field documented, validated)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.utils.config import strict_from_dict

RECOVERY_METHODS = ("full", "lora", "distill")
PROTOCOLS = ("deployment", "transfer")


@dataclass
class StudyConfig:
    """Everything that decides a study's results; ``study_config.json`` records it and a resumed run
    must match it."""

    protocol: str = "deployment"
    """``deployment``: train the base on ``tasks``, then score, prune, recover and evaluate on the same
    tasks. ``transfer`` (the paper's protocol): pretrain the base on ``tasks``, then evaluate it zero-shot
    on ``target_tasks``, score its blocks on the targets' action loss, prune, fine-tune every variant and
    the unpruned model on target demonstrations with the same budget, and evaluate on the targets."""
    tasks: tuple[str, ...] = ("drawer-close",)
    """Meta-World tasks (names or groups such as mt10 / easy) for demonstrations and evaluation (the
    pretraining tasks under the transfer protocol)."""
    target_tasks: tuple[str, ...] = ()
    """Transfer protocol: the new tasks the pretrained base is adapted to (none of them in ``tasks``)."""
    episodes_per_task: int = 10
    """Successful scripted-expert demonstrations per task (when the study generates its own data)."""
    image_size: int = 64
    """Camera image side in pixels (demonstrations and evaluation)."""
    data_seed: int = 0
    """Seed of the demonstration start configurations."""
    train_preset: str = "quick"
    """``vlatrim train`` preset the base model starts from (see ``vlatrim.train.presets``)."""
    backbone: str | None = None
    """Language backbone spec; None: the training preset's."""
    train_steps: int = 300
    """Optimizer steps of the base model."""
    batch_size: int = 32
    """Samples per optimizer step (base training and recovery)."""
    lr: float | None = None
    """Peak learning rate of base training; None: the preset's."""
    analysis_scorers: tuple[str, ...] = ("drop_one", "block_influence", "gateprobe")
    """Block scorers computed on the base model (the scorer comparison); must include every pruning scorer."""
    scorers: tuple[str, ...] = ("drop_one",)
    """Block scorers whose ranking the sweep prunes by (one pruned variant per scorer and ratio)."""
    analysis_batches: int = 4
    """Calibration batches of the analysis (held-out episodes)."""
    analysis_batch_size: int = 16
    """Samples per calibration batch."""
    ratios: tuple[float, ...] = (0.5,)
    """Fractions of the backbone's blocks to remove; each becomes round(ratio * blocks), at least 1 and
    at most blocks - 1 (repeated counts are swept once)."""
    methods: tuple[str, ...] = ("full",)
    """Recovery fine-tuning methods (``vlatrim recover``): full, lora, distill."""
    recover_steps: int = 100
    """Optimizer steps of each recovery run; the unpruned control gets the same budget."""
    recover_budgets: tuple[float, ...] = ()
    """Recovery budgets as fractions of the base's ``train_steps`` (e.g. 0.1, 0.2, 0.5, 1.0): every pruned
    variant and the unpruned control are fine-tuned at each, so success can be read against budget.
    Empty: one budget of ``recover_steps``."""
    recover_lr: float | None = None
    """Peak learning rate of recovery; None: recovery's default."""
    quantize: tuple[str, ...] = ()
    """Quantization schemes (``vlatrim quantize``: int8-weight, int8-dynamic, int4-weight) applied to the base,
    every pruned variant and every fine-tuned model; each quantized model is evaluated and benched beside
    its float source (the report's Pareto plot). Empty: no quantization stage."""
    eval_episodes: int = 10
    """Closed-loop evaluation episodes per task (unseen start configurations)."""
    eval_max_steps: int = 200
    """Step limit per evaluation episode (Meta-World's own limit is 500)."""
    eval_workers: int = 1
    """Parallel evaluation worker processes."""
    closed_loop: bool = True
    """Evaluate success in Meta-World (needs rendering); False: offline held-out action error only."""
    bench_repeats: int = 10
    """Timed forwards per latency measurement (medians reported)."""
    bench_batch_size: int = 1
    """Observations per forward in the benchmark (1 = one robot)."""
    device: str = "cpu"
    """Where training, analysis, evaluation and benchmarks run: cpu, cuda, auto."""
    seed: int = 0
    """Seed of training, recovery and evaluation."""

    def __post_init__(self) -> None:
        import vlatrim.analyze.scorers  # noqa: F401  (registers the scorers)
        from vlatrim.analyze.base import SCORERS
        from vlatrim.sim.backends.metaworld.tasks import parse_tasks

        self.tasks = tuple(parse_tasks(list(self.tasks)))
        self.target_tasks = tuple(parse_tasks(list(self.target_tasks))) if self.target_tasks else ()
        if self.protocol not in PROTOCOLS:
            raise VlatrimError(f"protocol {self.protocol!r} is not valid; valid: {', '.join(PROTOCOLS)}")
        if self.protocol == "transfer":
            if not self.target_tasks:
                raise VlatrimError("the transfer protocol needs --target-tasks (new tasks outside the pretraining tasks)")
            shared = sorted(set(self.tasks) & set(self.target_tasks))
            if shared:
                raise VlatrimError(f"target task(s) {', '.join(shared)} are also pretraining tasks; the transfer "
                                   "protocol adapts to tasks outside --tasks")
        elif self.target_tasks:
            raise VlatrimError("--target-tasks is used by --protocol transfer only")
        self.ratios = tuple(float(r) for r in self.ratios)
        self.scorers, self.analysis_scorers, self.methods = tuple(self.scorers), tuple(self.analysis_scorers), tuple(self.methods)
        self.recover_budgets = tuple(sorted({float(b) for b in self.recover_budgets}))
        for b in self.recover_budgets:
            if not 0.0 < b <= 10.0:
                raise VlatrimError(f"recovery budget {b!r} is not valid; a fraction of the base's training steps must be "
                                   "in (0, 10]")
        for name in ("episodes_per_task", "image_size", "train_steps", "batch_size", "analysis_batches",
                     "analysis_batch_size", "recover_steps", "eval_episodes", "eval_max_steps", "eval_workers",
                     "bench_repeats", "bench_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise VlatrimError(f"study setting {name}={v!r} must be a positive integer")
        if not self.ratios:
            raise VlatrimError("--ratios needs at least one fraction of blocks to remove, e.g. 0.5")
        for r in self.ratios:
            if not 0.0 < r < 1.0:
                raise VlatrimError(f"ratio {r!r} is not valid; a fraction of blocks to remove must be in (0, 1)")
        if not self.scorers:
            raise VlatrimError("--scorer needs at least one block scorer")
        for s in (*self.analysis_scorers, *self.scorers):
            SCORERS.get(s)
            if SCORERS.get(s).unit != "block":
                raise VlatrimError(f"scorer {s!r} scores {SCORERS.get(s).unit}s; the sweep needs a block scorer")
        missing = [s for s in self.scorers if s not in self.analysis_scorers]
        if missing:  # the sweep's scorers are always computed
            self.analysis_scorers = self.analysis_scorers + tuple(missing)
        from vlatrim.quantize.schemes import SCHEMES, torchao

        self.quantize = tuple(dict.fromkeys(self.quantize))
        for q in self.quantize:
            SCHEMES.get(q)
        if self.quantize:
            torchao()  # missing: refused now, not after the base has trained
        for m in self.methods:
            if m not in RECOVERY_METHODS:
                raise VlatrimError(f"recovery method {m!r} is not valid; valid: {', '.join(RECOVERY_METHODS)}")
        if self.eval_max_steps > 500:
            raise VlatrimError(f"eval_max_steps={self.eval_max_steps} exceeds Meta-World's 500-step limit")
        if self.device not in ("cpu", "auto") and not self.device.startswith("cuda"):
            raise VlatrimError(f"device {self.device!r} is not valid; valid: cpu, cuda, cuda:N, auto")

    def block_counts(self, num_blocks: int) -> list[int]:
        """Blocks to remove for each ratio (deduplicated, ascending), for a backbone of ``num_blocks``."""
        if num_blocks < 2:
            raise VlatrimError(f"the base model has {num_blocks} backbone block(s); a sweep needs at least 2")
        return sorted({min(max(int(round(r * num_blocks)), 1), num_blocks - 1) for r in self.ratios})

    def work_tasks(self) -> tuple[str, ...]:
        """The tasks that are scored, fine-tuned on and evaluated: the targets under transfer."""
        return self.target_tasks if self.protocol == "transfer" else self.tasks

    def recovery_budgets(self) -> list[tuple[str, float | None, int]]:
        """(name suffix, fraction of ``train_steps`` or None, optimizer steps) of each recovery budget.
        Without ``recover_budgets``: one budget of ``recover_steps`` and no suffix (names as before)."""
        if not self.recover_budgets:
            return [("", None, self.recover_steps)]
        return [(f"-b{b:g}", b, max(1, int(round(b * self.train_steps)))) for b in self.recover_budgets]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        return strict_from_dict(cls, data, "study setting")
