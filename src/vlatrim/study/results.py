"""study.json: one stable document with the settings, the device, what ran, and one row per variant
(schema in docs/study.md). Metrics a stage could not produce are null, and ``unavailable`` says why."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import torch

from vlatrim.bench.run import device_info
from vlatrim.study.config import StudyConfig
from vlatrim.study.store import StageLog

# Row fields, in table order (docs/study.md documents each).
METRICS = ("offline_l1", "success_rate", "params_total", "params_backbone", "flops_full", "latency_full_ms",
           "latency_backbone_ms", "query_hz", "actions_per_s", "peak_memory_bytes", "weight_bytes")


def _bench_row(entry: dict[str, Any] | None) -> dict[str, Any]:
    if entry is None:
        return {k: None for k in METRICS[2:]}
    lat = entry["latency_ms"]
    ctrl = entry["control"].get("eager", {})
    return {"params_total": entry["params"]["total"], "params_backbone": entry["params"]["backbone"],
            "flops_full": entry["flops"]["counted"]["full"],
            "latency_full_ms": lat["full"]["eager"].get("median_ms"),
            "latency_backbone_ms": lat["backbone"]["eager"].get("median_ms"),
            "query_hz": ctrl.get("query_hz"), "actions_per_s": ctrl.get("actions_per_s"),
            "peak_memory_bytes": entry["memory"].get("peak_bytes"), "weight_bytes": entry.get("weight_bytes")}


def assemble(cfg: StudyConfig, out: Path, results: dict[str, Any], analysis: dict[str, Any],
             variants: list[dict[str, Any]], bench: dict[str, Any], log: StageLog, unavailable: dict[str, str],
             device: str, schema: int) -> dict[str, Any]:
    """The study.json document (without ``plots`` / ``report``, which the caller adds)."""
    name_to_bench = dict(zip(bench["variant_names"], bench["models"]))
    rows = []
    closed_reason = None
    for v in variants:
        ev = v["eval"]
        closed = ev.get("closed_loop")
        closed_reason = closed_reason or ev.get("closed_loop_unavailable")
        b = name_to_bench.get(v.get("bench_of", v["name"]))
        row = {k: v.get(k) for k in ("name", "kind", "scorer", "method", "removed", "blocks_kept", "kept_blocks",
                                     "scheme", "quantized_from", "quantized_kind")}
        row.update({"path": str(Path(v["path"]).relative_to(out.resolve()) if Path(v["path"]).is_relative_to(out.resolve()) else v["path"]),
                    "offline_l1": (ev.get("offline") or {}).get("l1"),
                    "success_rate": closed.get("success_rate") if closed else None,
                    "success_per_task": closed.get("per_task") if closed else None,
                    **_bench_row(b), "bench_of": v.get("bench_of", v["name"])})
        row["success_wilson95"] = closed.get("wilson95_pooled") if closed else None
        if "recover" in v:
            row["recover"] = v["recover"]
            row["budget_fraction"] = v.get("budget_fraction")
            row["recover_steps"] = v["recover"].get("steps")
            samples = (v["recover"].get("budget") or {}).get("samples")
            flops = row.get("flops_full")
            # Training compute of the recovery run, approximated as forward + backward = 3 forwards per
            # sample (full fine-tuning; LoRA's backward is cheaper, so this overstates LoRA's cost).
            row["train_flops"] = (3 * flops / cfg.bench_batch_size * samples) if flops and samples else None
        rows.append(row)
    if closed_reason and not any(r["success_rate"] is not None for r in rows):
        unavailable.setdefault("closed_loop_eval", closed_reason)
    notes = []
    if "recover" in unavailable:
        notes.append("Recovery fine-tuning did not run (" + unavailable["recover"] + "): this study shows "
                     "drop results only; no recovered or control numbers exist.")
    if "closed_loop_eval" in unavailable:
        notes.append("Closed-loop success was not measured (" + unavailable["closed_loop_eval"] + "); the quality "
                     "metric is the held-out offline action L1 (lower is better).")
    if device == "cpu":
        notes.append("Timings were taken on a CPU, where other load on the machine shows up in latency; compare "
                     "ratios within this run rather than absolute milliseconds across machines.")
    notes.append("Recovered variants keep their pruned model's architecture; their efficiency columns are those of "
                 "the pruned model they came from (bench_of).")
    if any(r["kind"] == "quantized" for r in rows):
        notes.append("Quantized variants (name+scheme) are the float variant they name, quantized after pruning and "
                     "fine-tuning by `vlatrim quantize`; they are evaluated on the same episodes.")
    curves = budget_curves(rows) if cfg.recover_budgets else []
    lines = headline(rows, analysis["num_blocks"])
    return {
        "schema_version": schema,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": cfg.to_dict(),
        "device": device_info(torch.device(device)),
        "protocol": results.get("protocol"),
        "data": results["data"],
        **({"target_data": results["target_data"]} if "target_data" in results else {}),
        "base": {"num_blocks": analysis["num_blocks"], "blocks_path": analysis["blocks_path"]},
        "analysis": {"path": "analysis/analysis.json", "scorers": analysis["scorers"]},
        "headline": lines,
        "variants": rows,
        **({"budget_curves": curves} if curves else {}),
        "bench": {"path": "bench/bench.json", "notes": bench.get("notes", [])},
        "stages": {n: {"status": log.status[n], "seconds": log.seconds[n]} for n in log.status},
        "unavailable": unavailable,
        "notes": notes,
    }


def _point(r: dict[str, Any]) -> dict[str, Any]:
    return {"fraction": r.get("budget_fraction") or 0.0, "steps": r.get("recover_steps") or 0,
            "success_rate": r.get("success_rate"), "wilson95": r.get("success_wilson95"),
            "offline_l1": r.get("offline_l1"), "train_flops": r.get("train_flops") or 0.0}


def _at_least(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """Whether point ``a`` is at least as good as ``b``: success when both have it, else held-out L1."""
    if a["success_rate"] is not None and b["success_rate"] is not None:
        return a["success_rate"] >= b["success_rate"]
    if a["offline_l1"] is not None and b["offline_l1"] is not None:
        return a["offline_l1"] <= b["offline_l1"]
    return None


def budget_curves(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Quality against recovery budget, one curve per (scorer, blocks removed, method), beside the
    unpruned control's curve for the same method. Budget 0 is the model before any fine-tuning: the
    pruned model as cut, and the base model itself.

    Each curve says from which budget on the pruned model meets the control (at that budget and at every
    larger one measured): step-matched (the control at the same budget) and FLOP-matched (the control at
    the largest budget whose training FLOPs do not exceed the pruned run's: a pruned step is cheaper, so
    at equal compute the control gets fewer steps). "Meets" compares the point estimates (success, else
    held-out L1); the intervals are in the points.
    """
    base = next((r for r in rows if r["kind"] == "base"), None)
    out = []
    for method in sorted({r["method"] for r in rows if r["kind"] in ("control", "recovered")}):
        control = sorted((_point(r) for r in rows if r["kind"] == "control" and r["method"] == method),
                         key=lambda p: p["fraction"])
        if base is not None:
            control = [{**_point(base), "fraction": 0.0, "steps": 0, "train_flops": 0.0}] + control
        keys = sorted({(r["scorer"], r["removed"]) for r in rows if r["kind"] == "recovered" and r["method"] == method})
        for scorer, removed in keys:
            pts = sorted((_point(r) for r in rows if r["kind"] == "recovered" and r["method"] == method
                          and r["scorer"] == scorer and r["removed"] == removed), key=lambda p: p["fraction"])
            dropped = next((r for r in rows if r["kind"] == "dropped" and r["scorer"] == scorer
                            and r["removed"] == removed), None)
            if dropped is not None:  # budget 0: the pruned model before any recovery
                pts = [{**_point(dropped), "fraction": 0.0, "steps": 0, "train_flops": 0.0}] + pts
            step, flop = [], []
            for p in pts:
                same = next((c for c in control if c["fraction"] == p["fraction"]), None)
                step.append(same is not None and bool(_at_least(p, same)))
                affordable = [c for c in control if c["train_flops"] <= p["train_flops"]]
                flop.append(bool(affordable) and bool(_at_least(p, affordable[-1])))
            out.append({"scorer": scorer, "removed": removed, "method": method, "points": pts, "control": control,
                        "meets_control_step_matched_at": _meets_from(pts, step),
                        "meets_control_flop_matched_at": _meets_from(pts, flop)})
    return out


def _meets_from(points: list[dict[str, Any]], meets: list[bool]) -> float | None:
    """The smallest budget fraction from which the pruned model meets the control at every larger budget
    measured too (a single lucky point between two misses does not count); None when it misses at the largest."""
    start = None
    for p, ok in zip(reversed(points), reversed(meets)):
        if not ok:
            break
        start = p["fraction"]
    return start


def quality_text(r: dict[str, Any] | None, interval_key: str = "success_wilson95") -> str:
    """A row's (or a budget point's, ``interval_key="wilson95"``) quality for people: success with its 95%
    interval, else the held-out L1; "-" when neither was measured."""
    if r is None:
        return "-"
    if r.get("success_rate") is not None:
        w = r.get(interval_key)
        return f"{r['success_rate']:.2f}" + (f" [{w[0]:.2f}, {w[1]:.2f}]" if w else "")
    return f"L1 {r['offline_l1']:.4f}" if r.get("offline_l1") is not None else "-"


def _better_or_equal(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    if b is None:
        return False
    p = _at_least({"success_rate": a.get("success_rate"), "offline_l1": a.get("offline_l1")},
                  {"success_rate": b.get("success_rate"), "offline_l1": b.get("offline_l1")})
    return bool(p)


def headline(rows: list[dict[str, Any]], num_blocks: int) -> list[str]:
    """The study's answer in a few lines: the largest cut whose recovered model meets the unpruned reference
    (the control fine-tuned with the same budget, else the base), what it cost before recovery and what it
    buys; then what quantizing that model adds. Empty when nothing was recovered."""
    by_name = {r["name"]: r for r in rows}
    base = next((r for r in rows if r["kind"] == "base"), None)
    recovered = [r for r in rows if r["kind"] == "recovered"]
    if base is None or not recovered:
        return []
    top = max((r.get("budget_fraction") or 0.0) for r in recovered)
    recovered = [r for r in recovered if (r.get("budget_fraction") or 0.0) == top]

    def reference(r: dict[str, Any]) -> dict[str, Any] | None:
        return next((c for c in rows if c["kind"] == "control" and c.get("method") == r.get("method")
                     and c.get("budget_fraction") == r.get("budget_fraction")), None)

    meeting = [r for r in recovered if _better_or_equal(r, reference(r) or base)]
    if meeting:
        best = max(meeting, key=lambda r: (r["removed"], r.get("success_rate") or 0.0))
        verdict = "meets"
    else:
        best = max(recovered, key=lambda r: (r.get("success_rate") if r.get("success_rate") is not None
                                              else -(r.get("offline_l1") or 0.0), r["removed"]))
        verdict = "does not reach"
    ref = reference(best)
    dropped = by_name.get(best.get("bench_of") or "")
    steps = best.get("recover_steps")
    line = (f"{best['removed']} of {num_blocks} blocks removed ({best.get('scorer')}): {quality_text(dropped)} -> "
            f"{quality_text(best)} after {steps} steps of {best.get('method')} recovery, which {verdict} the unpruned "
            + (f"model fine-tuned with the same budget ({quality_text(ref)})" if ref else f"base ({quality_text(base)})"))
    speed = []
    if dropped and dropped.get("latency_backbone_ms") and base.get("latency_backbone_ms"):
        speed.append(f"backbone {base['latency_backbone_ms'] / dropped['latency_backbone_ms']:.1f}x faster")
    if dropped and dropped.get("latency_full_ms") and base.get("latency_full_ms"):
        speed.append(f"full forward {base['latency_full_ms'] / dropped['latency_full_ms']:.1f}x faster")
    if dropped and dropped.get("params_total") and base.get("params_total"):
        speed.append(f"{dropped['params_total'] / base['params_total']:.2f}x the parameters")
    lines = [line + ("; " + ", ".join(speed) if speed else "") + "."]
    for q in (r for r in rows if r["kind"] == "quantized" and r.get("quantized_from") == best["name"]):
        parts = [f"quantized {q['scheme']}: {quality_text(q)} (float {quality_text(best)})"]
        qb = by_name.get(q.get("bench_of") or "")
        if qb and dropped and qb.get("weight_bytes") and dropped.get("weight_bytes"):
            parts.append(f"weights {dropped['weight_bytes'] / 2**20:.1f} -> {qb['weight_bytes'] / 2**20:.1f} MiB "
                         f"({qb['weight_bytes'] / dropped['weight_bytes']:.2f}x)")
        if qb and dropped and qb.get("latency_full_ms") and dropped.get("latency_full_ms"):
            parts.append(f"full forward {dropped['latency_full_ms']:.2f} -> {qb['latency_full_ms']:.2f} ms")
        lines.append("The same model " + ", ".join(parts) + ".")
    return lines
