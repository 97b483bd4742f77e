"""``vlatrim prune``: structural surgery by explicit spec or by scores and a budget."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlatrim.cli.registry import COMMANDS
from vlatrim.errors import VlatrimError

log = logging.getLogger("vlatrim.prune")


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise VlatrimError(f"{flag} {text!r} is not a comma-separated list of integers, e.g. 3,5,7") from None


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise VlatrimError(f"{flag} {text!r} is not a number or a comma-separated list of numbers, e.g. 0.5") from None


@dataclass
class PruneCommand:
    """Remove blocks, heads, MLP channels or vocabulary from a model's language backbone and save it."""

    model: str
    """Checkpoint directory to prune (config.json + safetensors) of any policy family: a reference-VLA
    checkpoint, a transformers text model or VLM, or a family registered by a plug-in."""
    out: str
    """Output directory for the pruned checkpoint and prune.json; must not exist."""
    drop_blocks: str | None = None
    """Blocks to remove, comma-separated indices (e.g. 3,5,7)."""
    keep_first: int | None = None
    """Keep only the first K blocks."""
    scores: str | None = None
    """analysis.json from `vlatrim analyze`: block scores (with --ratio/--target-params/--count), angular
    distances (with --span), head and MLP scores (with --heads/--mlp-ratio)."""
    scorer: str | None = None
    """With --scores: the block scorer to rank by (default: drop_one, else gateprobe, block_influence, ...)."""
    ratio: float | None = None
    """With --scores: fraction of the backbone's parameters to remove, in [0, 1)."""
    target_params: int | None = None
    """With --scores: backbone parameter count to reach."""
    count: int | None = None
    """With --scores: number of lowest-scoring blocks to remove."""
    span: int | None = None
    """With --scores: remove the contiguous span of this many blocks with the smallest angular distance."""
    heads: str | None = None
    """Query heads to keep: one number for every block, or one per block (comma-separated)."""
    head_mode: Literal["auto", "kv", "query"] = "auto"
    """GQA rule: kv = remove whole KV groups, query = remove evenly within groups, auto = whichever fits."""
    mlp_ratio: str | None = None
    """Fraction of MLP channels to remove, in [0, 1): one number, or one per block (comma-separated)."""
    vocab_from: str | None = None
    """Keep only the tokens of this dataset's task texts (LeRobot dir) or text file, plus special tokens."""
    budget_vocab: bool = True
    """With --scores and --ratio/--target-params: spend the budget first on tokens the analysis saw unused."""
    budget_units: Literal["blocks", "all"] = "blocks"
    """With --scores and --ratio/--target-params, what the budget removes after unused vocabulary: blocks =
    whole blocks in the block scorer's order; all = blocks, KV head groups (or query heads evenly per group
    with --head-mode query) and MLP channels, cheapest estimated loss per parameter first (needs drop_one or
    gateprobe, head_taylor and channel_taylor scores)."""
    drop_lm_head: bool = False
    """Remove the LM head (for a VLA whose actions come from a regression head)."""
    blocks_path: str | None = None
    """Dotted path of the backbone's block list, when automatic detection picks the wrong one."""
    pathway: str = "language"
    """Which block list --drop-blocks cuts: language (the backbone), vision, action, or a block list's dotted
    path (see `vlatrim inspect`). Cuts a block list is coupled to (e.g. an action expert paired with the
    language layers) follow automatically, as the model's policy family declares."""
    keep_partners: bool = False
    """Cut only the named block list and keep the blocks its cuts are coupled to, re-paired with the surviving
    blocks (a SmolVLA expert-only cut); the policy family refuses it, naming what it allows, where its
    architecture cannot re-pair them."""
    dry_run: bool = False
    """Print the plan and the parameter budget, cut nothing, write nothing."""
    trust_remote_code: bool = False
    """Run the modeling code a transformers model directory ships (configuration_*.py / modeling_*.py named by
    auto_map in config.json, as OpenVLA's does). Off by default: such a model is refused, and no code from it runs."""

    def run(self) -> None:
        from vlatrim.families import family_of
        from vlatrim.prune.api import PruneRequest, couple, execute, make_plan

        if Path(self.out).exists():
            raise VlatrimError(f"--out {self.out!r} already exists; choose a new directory or remove it")
        req = PruneRequest(
            drop_blocks=_ints(self.drop_blocks, "--drop-blocks"), keep_first=self.keep_first, scores=self.scores,
            ratio=self.ratio, target_params=self.target_params, count=self.count, span=self.span,
            heads=_ints(self.heads, "--heads"), head_mode=self.head_mode,
            mlp_ratio=_floats(self.mlp_ratio, "--mlp-ratio"), vocab_from=self.vocab_from,
            drop_lm_head=self.drop_lm_head, blocks_path=self.blocks_path, scorer=self.scorer,
            budget_vocab=self.budget_vocab, budget_units=self.budget_units, pathway=self.pathway,
            keep_partners=self.keep_partners,
        )
        model_dir = Path(self.model)
        family = family_of(model_dir)
        if why := family.refusal():
            raise VlatrimError(f"model {self.model!r} cannot be pruned: {why}")
        model = family.load(model_dir, trust_remote_code=self.trust_remote_code)
        handle = family.handle(model, self.blocks_path)
        plan, before = make_plan(req, model, handle, model_dir)
        plan = couple(plan, model, handle, family, keep_partners=req.keep_partners)
        print(f"plan for {self.model} ({type(model).__name__}, {handle.num_blocks} blocks, "
              f"backbone {before['backbone']:,} params):")
        for line in plan.describe(handle.num_blocks):
            print(f"  {line}")
        if self.dry_run:
            print("dry run: nothing written")
            return
        report = execute(req, model, handle, plan, before, self.out, model_dir, hooks=family)
        b, a = report["params"]["before"], report["params"]["after"]
        print(f"backbone {b['backbone']:,} -> {a['backbone']:,} params "
              f"({100 * report['params']['backbone_ratio_removed']:.1f}% removed); total {b['total']:,} -> {a['total']:,}")
        print(f"saved {self.out} (reload: {report['reload']['loader']})")


COMMANDS.register("prune")(PruneCommand)
