"""Run scorers over one set of calibration batches and gather the results (``analysis.json``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from scipy.stats import spearmanr

import vlatrim.analyze.scorers  # noqa: F401  (registers every scorer)
from vlatrim.analyze.base import SCORERS, ScoringContext
from vlatrim.errors import VlatrimError

log = logging.getLogger(__name__)

DEFAULT_SCORERS = ("drop_one", "gateprobe", "gate_first_order", "block_influence", "angular", "cka",
                   "head_taylor", "head_magnitude", "channel_taylor", "channel_magnitude", "vocabulary")


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation, None when either side is constant or shorter than 3."""
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def run_scorers(ctx: ScoringContext, names: Sequence[str] = DEFAULT_SCORERS,
                options: dict[str, dict[str, Any]] | None = None,
                precomputed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the named scorers (drop-one first, so every block scorer is compared with it).

    Args:
        ctx: model, handle, calibration batches and loss.
        names: scorer names (``SCORERS``); unknown names raise VlatrimError before anything runs.
        options: per-scorer constructor options, e.g. ``{"angular": {"span": 2}}``.
        precomputed: results of scorers already run on the same context (a resumed run); a drop-one
            result there serves as the Spearman reference.

    Returns:
        ``{"scorers": {name: {"unit", "loss_units", "preference", "options", "seconds", "scores": {path: [..]},
        "extras", ["spearman_vs_drop_one": {path: rho}]}}, "pathways": {...}}`` (see docs/analysis.md);
        ``unit`` / ``loss_units`` / ``preference`` are the scorer's declared metadata (``Scorer``), which
        ``vlatrim prune`` reads from the file.
    """
    options = options or {}
    classes = {n: SCORERS.get(n) for n in names}  # validates every name up front
    if len(set(names)) != len(names):
        raise VlatrimError(f"scorer names repeat: {', '.join(names)}")
    order = sorted(names, key=lambda n: n != "drop_one")
    scorers = {n: classes[n](**options.get(n, {})) for n in order}
    for scorer in scorers.values():  # every refusal before the first scorer spends any time
        scorer.check(ctx)
    out: dict[str, Any] = {}
    for n in order:
        scorer = scorers[n]
        ctx.model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        res = scorer.score(ctx)
        dt = time.perf_counter() - t0
        log.info("scorer %s took %.2f s", n, dt)
        entry: dict[str, Any] = {**type(scorer).metadata(), "options": scorer.options(), "seconds": dt,
                                 "scores": {p: s.tolist() for p, s in res.scores.items()}, "extras": res.extras}
        ref_entry = out.get("drop_one") or (precomputed or {}).get("drop_one")
        if scorer.unit == "block" and ref_entry is not None and n != "drop_one":
            ref = ref_entry["scores"]
            entry["spearman_vs_drop_one"] = {p: spearman(v, ref[p]) for p, v in entry["scores"].items() if p in ref}
        out[n] = entry
    return {"scorers": out, "pathways": pathway_summary(ctx, {**(precomputed or {}), **out})}


def pathway_summary(ctx: ScoringContext, results: dict[str, Any]) -> dict[str, Any]:
    """Per pathway (language / vision / action): drop-one and GateProbe per block, their means and maxima,
    so a report can say which pathway tolerates removal."""
    summary: dict[str, Any] = {}
    for pathway, lists in ctx.handle.pathways().items():
        if pathway not in ctx.pathways:
            continue
        for bl in lists:
            row: dict[str, Any] = {"pathway": pathway, "num_blocks": len(bl)}
            for n in ("drop_one", "gateprobe"):
                vals = results.get(n, {}).get("scores", {}).get(bl.path)
                if vals is not None:
                    t = torch.tensor(vals, dtype=torch.float64)
                    row[n] = {"per_block": vals, "mean": float(t.mean()), "max": float(t.max()),
                              "min": float(t.min())}
            summary[bl.path] = row
    return summary
