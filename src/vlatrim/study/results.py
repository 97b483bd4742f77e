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
           "latency_backbone_ms", "query_hz", "actions_per_s", "peak_memory_bytes")


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
            "peak_memory_bytes": entry["memory"].get("peak_bytes")}


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
        row = {k: v.get(k) for k in ("name", "kind", "scorer", "method", "removed", "blocks_kept", "kept_blocks")}
        row.update({"path": str(Path(v["path"]).relative_to(out.resolve()) if Path(v["path"]).is_relative_to(out.resolve()) else v["path"]),
                    "offline_l1": (ev.get("offline") or {}).get("l1"),
                    "success_rate": closed.get("success_rate") if closed else None,
                    "success_per_task": closed.get("per_task") if closed else None,
                    **_bench_row(b), "bench_of": v.get("bench_of", v["name"])})
        if "recover" in v:
            row["recover"] = v["recover"]
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
    return {
        "schema_version": schema,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": cfg.to_dict(),
        "device": device_info(torch.device(device)),
        "data": results["data"],
        "base": {"num_blocks": analysis["num_blocks"], "blocks_path": analysis["blocks_path"]},
        "analysis": {"path": "analysis/analysis.json", "scorers": analysis["scorers"]},
        "variants": rows,
        "bench": {"path": "bench/bench.json", "notes": bench.get("notes", [])},
        "stages": {n: {"status": log.status[n], "seconds": log.seconds[n]} for n in log.status},
        "unavailable": unavailable,
        "notes": notes,
    }
