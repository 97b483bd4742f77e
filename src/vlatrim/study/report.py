"""report.html: one self-contained page (tables, PNGs embedded as base64, settings and device)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from vlatrim.study.results import quality_text
from vlatrim.utils.io import atomic_path

COLUMNS = [("name", "variant"), ("kind", "kind"), ("blocks_kept", "blocks kept"), ("kept_blocks", "kept"),
           ("success_rate", "success"), ("offline_l1", "held-out L1"), ("params_total", "params"),
           ("params_backbone", "backbone params"), ("flops_full", "GFLOPs"), ("latency_full_ms", "full ms"),
           ("latency_backbone_ms", "backbone ms"), ("query_hz", "Hz"), ("actions_per_s", "actions/s"),
           ("weight_bytes", "weights MiB"), ("peak_memory_bytes", "peak MiB")]


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "&ndash;"
    if key == "flops_full":
        return f"{v / 1e9:.3f}"
    if key in ("peak_memory_bytes", "weight_bytes"):
        return f"{v / 2**20:.1f}"
    if key in ("params_total", "params_backbone"):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3f}" if key in ("success_rate", "offline_l1") else f"{v:.2f}"
    if isinstance(v, list):
        return html.escape(",".join(map(str, v)))
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rate(p: dict[str, Any] | None) -> str:
    """A budget point's quality: success with its 95% interval, or the held-out L1."""
    text = quality_text(p, "wilson95")
    return "&ndash;" if text == "-" else html.escape(text)


def _frac(f: float | None) -> str:
    return "not at the largest budget run" if f is None else f"budget {f:g} on"


def render(study: dict[str, Any], out: Path) -> str:
    """The HTML text of the report for ``study`` (PNG files are read from ``out``)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>vlatrim study</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
             ".note{background:#fff6d6;border-left:4px solid #e0b000;padding:6px 10px;margin:6px 0}"
             "pre{background:#f6f6f6;padding:8px;font-size:12px;overflow-x:auto}img{max-width:100%}",
             "</style></head><body>", "<h1>vlatrim drop-then-recovery study</h1>",
             *[f"<p class='headline'><b>{html.escape(line)}</b></p>" for line in study.get("headline") or []],
             f"<p>Created {html.escape(study['created'])} on {html.escape(study['device']['type'])} "
             f"({html.escape(str(study['device'].get('name')))}, torch {html.escape(study['device']['torch'])}). "
             f"Base model: {study['base']['num_blocks']} language blocks at "
             f"<code>{html.escape(str(study['base']['blocks_path']))}</code>. "
             f"Tasks: {html.escape(', '.join(study['settings']['tasks']))}.</p>"]
    proto = study.get("protocol") or {}
    if proto.get("name") == "transfer":
        parts.append(f"<p><b>Transfer protocol</b>: the base was pretrained on the tasks above, then scored, pruned, "
                     f"fine-tuned and evaluated on the target tasks "
                     f"{html.escape(', '.join(proto.get('evaluated_tasks') or []))}; the base row is its zero-shot "
                     f"result on the targets, and the control is the unpruned base fine-tuned on them.</p>")
    for n in study["notes"]:
        parts.append(f"<div class='note'>{html.escape(n)}</div>")
    parts.append("<h2>Variants</h2><p>success: closed-loop success rate with its 95% Wilson interval.</p>")
    rows = [[_rate({"success_rate": r.get("success_rate"), "wilson95": r.get("success_wilson95")})
             if k == "success_rate" else _fmt(k, r.get(k)) for k, _ in COLUMNS] for r in study["variants"]]
    parts.append(_table([h for _, h in COLUMNS], rows))
    if study.get("budget_curves"):
        parts.append("<h2>Recovery budget</h2>")
        brows = []
        for c in study["budget_curves"]:
            for p in c["points"]:
                ctrl = next((q for q in c["control"] if q["fraction"] == p["fraction"]), None)
                brows.append([html.escape(f"{c['removed']} removed ({c['scorer']})"), html.escape(c["method"]),
                              f"{p['fraction']:g}", str(p["steps"]), _rate(p), _rate(ctrl) if ctrl else "&ndash;",
                              f"{p['train_flops']:.3g}", f"{ctrl['train_flops']:.3g}" if ctrl else "&ndash;"])
            brows.append([html.escape(f"{c['removed']} removed ({c['scorer']})"), html.escape(c["method"]),
                          "meets the control from", "", _frac(c["meets_control_step_matched_at"]) + " (same steps)",
                          "", _frac(c["meets_control_flop_matched_at"]) + " (same FLOPs)", ""])
        parts.append(_table(["variant", "method", "budget", "steps", "pruned", "unpruned control",
                             "pruned train FLOPs", "control train FLOPs"], brows))
    sc = study["analysis"]["scorers"]
    n = study["base"]["num_blocks"]
    srows = [[html.escape(name)] + [f"{x:.4g}" for x in (s.get("per_block") or [])] +
             [f"{s['spearman_vs_drop_one']:.2f}" if s.get("spearman_vs_drop_one") is not None else "&ndash;",
              f"{s['seconds']:.1f}"] for name, s in sorted(sc.items())]
    parts.append(_table(["scorer"] + [f"block {i}" for i in range(n)] + ["Spearman vs drop-one", "seconds"], srows))
    parts.append("<h2>Figures</h2>")
    for p in study.get("plots", []):
        data = base64.b64encode((out / p).read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(p)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(p)}</figcaption></figure>")
    parts.append("<h2>Stages</h2>")
    parts.append(_table(["stage", "status", "seconds"], [[html.escape(k), v["status"], f"{v['seconds']:.1f}"]
                                                         for k, v in study["stages"].items()]))
    if study["unavailable"]:
        parts.append("<h3>Unavailable</h3>" + _table(["stage", "why"], [[html.escape(k), html.escape(v)]
                                                                        for k, v in study["unavailable"].items()]))
    parts.append("<h2>Exact settings</h2><pre>" + html.escape(json.dumps(study["settings"], indent=2), quote=False) + "</pre>")
    parts.append("<h2>Device</h2><pre>" + html.escape(json.dumps(study["device"], indent=2), quote=False) + "</pre>")
    parts.append("<h2>Data</h2><pre>" + html.escape(json.dumps(study["data"], indent=2, default=str), quote=False) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(study: dict[str, Any], out: str | Path) -> Path:
    """Write ``out/report.html`` atomically and return its path."""
    out = Path(out)
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(render(study, out))
    return path
