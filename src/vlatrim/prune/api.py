"""One pruning run, end to end: load -> plan -> (print) -> cut -> save with prune.json.

The CLI (``vlatrim prune``) fills a :class:`PruneRequest` and calls :func:`make_plan` then
:func:`execute`; library users can do the same, or call the selectors and ``apply_plan`` directly.
``make_plan`` runs the registered pruning methods (``vlatrim.prune.methods``) that the request asks for.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.models.params import params_by_component
from vlatrim.prune.analysis_io import Analysis
from vlatrim.prune.methods import PRUNE_METHODS
from vlatrim.prune.methods.base import EXCLUSIVE_STAGES, PlanContext, check_ratio, ordered_methods
from vlatrim.prune.plan import Coupling, PrunePlan, close_over_couplings
from vlatrim.prune.save import load_pruned, save_pruned, state_dict_sha256
from vlatrim.prune.surgery import apply_plan, validate_plan
from vlatrim.prune.tokenizer import agrees, can_rewrite, rewrite_wordpiece
from vlatrim.utils.hashing import dir_sha256
from vlatrim.utils.plugins import load_plugins

PRUNE_SCHEMA_VERSION = 1


@dataclass
class PruneRequest:
    """What to cut. Depth comes from at most one of ``drop_blocks``, ``keep_first``, ``span`` or
    ``scores`` (+ ``ratio`` / ``target_params`` / ``count``); widths and vocabulary combine with it.
    ``method_options`` asks for pruning methods registered outside vlatrim by name."""

    drop_blocks: list[int] | None = None  # explicit block indices to remove
    keep_first: int | None = None  # keep blocks 0..k-1
    scores: str | None = None  # analysis.json from `vlatrim analyze` (block, head, channel, span, vocabulary results)
    scorer: str | None = None  # which block scorer of the analysis ranks blocks (default: drop_one, gateprobe, ...)
    ratio: float | None = None  # with scores: fraction of the backbone's parameters to remove, in [0, 1)
    target_params: int | None = None  # with scores: backbone parameter count to reach
    count: int | None = None  # with scores: number of blocks to remove
    span: int | None = None  # remove the contiguous span of this many blocks with the smallest angular distance
    heads: list[int] | None = None  # query heads to keep: one value for every block, or one per block
    head_mode: Literal["auto", "kv", "query"] = "auto"  # GQA rule for head removal
    mlp_ratio: list[float] | None = None  # fraction of MLP channels to remove: one value, or one per block
    vocab_from: str | None = None  # dataset dir (meta/tasks.parquet) or text file whose tokens are kept
    drop_lm_head: bool = False  # remove the LM head (a VLA with a regression action head)
    blocks_path: str | None = None  # override backbone detection with the block list's dotted path
    budget_vocab: bool = True  # with a budget: spend it first on tokens the analysis saw unused
    budget_units: Literal["blocks", "all"] = "blocks"  # with a budget: what it removes after the vocabulary:
    # whole blocks in the scorer's order, or blocks, heads and MLP channels by loss per parameter
    pathway: str = "language"  # which block list drop_blocks cuts: language, vision, action, or a block-list path
    keep_partners: bool = False  # cut only that block list; the family re-pairs its coupled partners or refuses
    method_options: dict[str, dict[str, Any]] | None = None  # {method name: {option: value}} for registered
    # methods without a field of their own (PruneMethod.applies: the name is a key; .options reads the value)

    @property
    def parameter_budget(self) -> bool:
        """Whether the request sets a parameter budget (``ratio`` or ``target_params``)."""
        return self.ratio is not None or self.target_params is not None

    def __post_init__(self) -> None:
        if self.pathway != "language":
            other = [n for n in ("keep_first", "span", "scores", "heads", "mlp_ratio", "vocab_from") if getattr(self, n) is not None]
            if self.drop_blocks is None or other or self.drop_lm_head:
                raise VlatrimError(f"--pathway {self.pathway} takes --drop-blocks only (vision and action block lists are "
                                   "cut by index); use --pathway language for the other cuts")
            return
        depth = [n for n in ("drop_blocks", "keep_first", "span") if getattr(self, n) is not None]
        budget = [n for n in ("ratio", "target_params", "count") if getattr(self, n) is not None]
        if budget and self.scores is None:
            raise VlatrimError(f"--{budget[0].replace('_', '-')} needs --scores analysis.json (the ranking to cut by)")
        if len(budget) > 1:
            raise VlatrimError(f"give one of --ratio, --target-params, --count, not {', '.join('--' + b.replace('_', '-') for b in budget)}")
        if len(depth) + bool(budget) > 1:
            raise VlatrimError("choose one way to pick blocks: --drop-blocks, --keep-first, --span, or --scores with a budget")
        if self.span is not None and self.scores is None:
            raise VlatrimError("--span needs --scores analysis.json holding angular distances")
        if self.budget_units not in ("blocks", "all"):
            raise VlatrimError(f"--budget-units {self.budget_units!r} is not one of blocks, all")
        if self.budget_units == "all":
            if self.ratio is None and self.target_params is None:
                raise VlatrimError("--budget-units all needs --scores with --ratio or --target-params (a parameter budget)")
            if self.heads is not None or self.mlp_ratio is not None:
                raise VlatrimError("--budget-units all chooses heads and MLP channels itself; drop --heads / --mlp-ratio")
        if self.ratio is not None:
            check_ratio(self.ratio)
        for r in self.mlp_ratio or []:
            check_ratio(r, "--mlp-ratio")
        for name in self.method_options or {}:
            PRUNE_METHODS.get(name)  # an unknown name raises, listing the registered methods
        if not (depth or budget or self.heads or self.mlp_ratio or self.vocab_from or self.drop_lm_head
                or self.method_options):
            raise VlatrimError("nothing to prune: give --drop-blocks, --keep-first, --span, --scores with "
                               "--ratio/--target-params/--count, --heads, --mlp-ratio or --vocab-from")


def _tokenizer(model_dir: Path, required: bool = True) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # no tokenizer files, or a tokenizer class this install lacks
        if not required:
            return None  # special tokens then come from the config's *_token_id fields alone
        raise VlatrimError(f"--vocab-from needs the model's tokenizer in {str(model_dir)!r} ({type(e).__name__})") from None


def make_plan(req: PruneRequest, model: nn.Module, handle: Any, model_dir: Path | None = None) -> tuple[PrunePlan, dict[str, int]]:
    """Turn a request into a validated plan.

    Every registered pruning method whose ``applies(req)`` is true plans in ``STAGES`` order (vocabulary,
    widths, depth / budget: a budget subtracts what the earlier stages remove) and the plans are merged.

    Args:
        req: what to cut.
        model: the model (not modified).
        handle: its located backbone.
        model_dir: the checkpoint directory it came from (its tokenizer, for vocabulary cuts).
    Returns:
        The plan and the parameters by component before.
    """
    before = params_by_component(handle)
    load_plugins()  # pruning methods of installed plug-in packages
    analysis = Analysis(req.scores) if req.scores else None
    methods = [cls() for cls in ordered_methods()]
    methods = [m for m in methods if m.applies(req)]
    for stage in EXCLUSIVE_STAGES:
        clash = [m.name for m in methods if m.stage == stage]
        if len(clash) > 1:
            raise VlatrimError(f"the request asks {len(clash)} pruning methods to choose the {stage}: {', '.join(clash)}; ask for one")
    ctx = PlanContext(model=model, params_before=before, plan=PrunePlan(), model_dir=model_dir,
                      load_tokenizer=functools.partial(_tokenizer, model_dir) if model_dir is not None else None)
    for m in methods:
        ctx.plan = ctx.plan.merge(m.plan(req, handle, analysis, ctx))
    plan = ctx.plan
    if plan.vocab is not None and getattr(model, "tokenizer", None) is not None and not can_rewrite(model.tokenizer):
        raise VlatrimError(f"vocabulary: {type(model).__name__} tokenizes with its own {type(model.tokenizer).__name__}, "
                           "which vlatrim can only rewrite when it is WordPiece; prune the vocabulary of this model's backbone checkpoint instead")
    validate_plan(handle, plan)
    return plan, before


def source_hash(model: nn.Module, model_dir: Path | None) -> dict[str, str]:
    if model_dir is not None:
        return {"kind": "dir_sha256", "sha256": dir_sha256(model_dir)}
    return {"kind": "state_dict_sha256", "sha256": state_dict_sha256(model)}


class CutHooks(Protocol):
    """What a policy family (``vlatrim.families``) tells the surgery: couplings between block lists,
    cuts its architecture cannot express, its own config fields after a cut, and how it saves."""

    name: str

    def couplings(self, model: nn.Module, handle: Any) -> list[Coupling]: ...

    def check_cut(self, model: nn.Module, handle: Any, drops: dict[str, list[int]]) -> None: ...

    def check_plan(self, model: nn.Module, handle: Any, plan: PrunePlan) -> None: ...

    def cut_partners(self, model: nn.Module, plan: PrunePlan, kept: dict[str, list[int]]) -> None: ...

    def after_cut(self, model: nn.Module, kept: dict[str, list[int]]) -> None: ...

    def save(self, model: nn.Module, out: Path, destination: Path | None = None) -> None: ...


def couple(plan: PrunePlan, model: nn.Module, handle: Any, hooks: CutHooks | None,
           keep_partners: bool = False) -> PrunePlan:
    """``plan`` with every block removal its couplings force (e.g. SmolVLA's expert layer i goes with VLM
    layer i), checked by the family. Returns ``plan`` itself when nothing is coupled.

    With ``keep_partners`` the couplings are not applied: the plan cuts only what it names, and the family's
    ``check_cut`` decides whether the partners can be re-paired with the surviving blocks (or refuses)."""
    if hooks is None:
        return plan
    drops = {handle.blocks_path: plan.drop_blocks, **plan.pathway_drops}
    couplings = hooks.couplings(model, handle)
    closed = {k: sorted(v) for k, v in drops.items() if v} if keep_partners else close_over_couplings(drops, couplings)
    hooks.check_cut(model, handle, closed)
    if keep_partners and couplings:
        out = dataclasses.replace(plan, notes={**plan.notes, "partners_kept": [c.to_json() for c in couplings]})
    elif closed == {k: v for k, v in drops.items() if v}:
        out = plan
    else:
        out = dataclasses.replace(plan, drop_blocks=closed.pop(handle.blocks_path, []), pathway_drops=closed,
                                  notes={**plan.notes, "couplings": [c.to_json() for c in couplings]})
        out.methods = plan.methods + ["couplings"]
    hooks.check_plan(model, handle, out)
    return out


def execute(req: PruneRequest, model: nn.Module, handle: Any, plan: PrunePlan, before: dict[str, int], out: str | Path,
            model_dir: Path | None = None, hooks: CutHooks | None = None) -> dict[str, Any]:
    """Cut ``model`` by ``plan``, save it to ``out`` with prune.json, and return the prune.json content.

    With ``hooks`` (the model's policy family) the family fixes its own config after the cut and saves
    the model; without, the model's own ``save_pretrained`` does."""
    src = source_hash(model, model_dir)  # before the cut: the hash names the source model
    t0 = time.perf_counter()
    old_tok = None
    if plan.vocab is not None:
        old_tok = getattr(model, "tokenizer", None) or (_tokenizer(model_dir, required=False) if model_dir else None)
    if req.blocks_path and not plan.drop_lm_head:  # re-locate the cut model at the same user-given path
        from vlatrim.models.adapters import locate_backbone

        result = apply_plan(model, plan, handle, locate=lambda m: locate_backbone(m, req.blocks_path))
    else:
        result = apply_plan(model, plan, handle)
    if hooks is not None:
        hooks.cut_partners(result.model, plan, result.kept_by_path)
        hooks.after_cut(result.model, result.kept_by_path)
    tokenizer_kind = None
    if result.remap is not None and old_tok is not None:
        new_tok = rewrite_wordpiece(old_tok, result.remap)
        texts = plan.notes.get("vocab_texts") or []
        if new_tok is not None and agrees(old_tok, new_tok, result.remap, texts):
            result.tokenizer = new_tok
            tokenizer_kind = "rewritten"
            if hasattr(result.model, "tokenizer"):  # a VLA that tokenizes for itself saves its own tokenizer
                result.model.tokenizer = new_tok
        else:
            tokenizer_kind = "vocab_map"  # load with vlatrim.prune.load_tokenizer
    after = params_by_component(result.handle)
    report = {
        "schema_version": PRUNE_SCHEMA_VERSION,
        "source": {"path": str(model_dir) if model_dir else None, **src, "class": type(model).__name__},
        "request": {k: v for k, v in dataclasses.asdict(req).items() if v not in (None, False)},
        "plan": plan.to_json(),
        "kept_blocks": result.kept_blocks,
        **({"kept_by_path": result.kept_by_path} if plan.pathway_drops else {}),
        **({"family": hooks.name} if hooks is not None else {}),
        "params": {"before": before, "after": after,
                   "backbone_ratio_removed": 1.0 - after["backbone"] / before["backbone"]},
        "widths": result.widths,
        "reload": {"plain_from_pretrained": result.plain_reload,
                   "class": type(result.model).__name__,
                   "loader": (f"{_public_module(result.model)}.{type(result.model).__name__}.from_pretrained"
                              if result.plain_reload else "vlatrim.prune.load_pruned")},
        "vocab": ({"before": result.remap.old_size, "after": len(result.remap), "map": "vocab_map.json",
                   "tokenizer": tokenizer_kind}
                  if result.remap is not None else None),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    save_pruned(result, out, report, source_dir=model_dir, save_model=hooks.save if hooks is not None else None)
    return report


def _public_module(model: nn.Module) -> str:
    mod = type(model).__module__
    return "transformers" if mod.startswith("transformers.") else mod


def load_for_pruning(model_dir: str | Path, blocks_path: str | None = None) -> tuple[nn.Module, Any, Path]:
    """Load a checkpoint directory and locate its backbone."""
    from vlatrim.models.adapters import locate_backbone

    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise VlatrimError(f"--model {str(d)!r} is not a checkpoint directory (no config.json)")
    model = load_pruned(d)
    return model, locate_backbone(model, blocks_path), d
