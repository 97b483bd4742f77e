"""The study's figures (matplotlib, PNG): quality vs blocks kept (base / dropped / recovered),
latency and parameters vs blocks kept, the block scorers side by side, quality vs recovery budget, and
quality vs latency and weight memory for every variant, float and quantized (the Pareto plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _quality(study: dict[str, Any], out: Path, metric: str, label: str, fname: str) -> str | None:
    rows = [r for r in study["variants"] if r.get(metric) is not None]
    # With several recovery budgets, this figure shows the largest (the budget figure shows them all).
    fracs = [r["budget_fraction"] for r in rows if r.get("budget_fraction") is not None]
    if fracs:
        rows = [r for r in rows if r["kind"] in ("base", "dropped") or r.get("budget_fraction") == max(fracs)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    n = study["base"]["num_blocks"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r in rows:
        if r["kind"] == "base":
            ax.axhline(r[metric], color="black", ls="--", label=f"base ({n} blocks)")
        elif r["kind"] == "control":
            ax.axhline(r[metric], color="gray", ls=":", label=f"base + {r['method']} fine-tuning (control)")
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["kind"] == "dropped":
            series.setdefault(f"dropped ({r['scorer']})", []).append((r["blocks_kept"], r[metric]))
        elif r["kind"] == "recovered":
            series.setdefault(f"recovered {r['method']} ({r['scorer']})", []).append((r["blocks_kept"], r[metric]))
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s" if name.startswith("recovered") else "o",
                ls="-" if name.startswith("recovered") else "--", color=colors[i % len(colors)], label=name)
    if metric == "success_rate":
        ax.set_ylim(-0.05, 1.05)  # rates: the whole range, so 0 and 1 are not on the frame
    ax.set_xlabel("language blocks kept")
    ax.set_ylabel(label)
    ax.set_xticks(range(1, n + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(label + " vs blocks kept")
    fig.tight_layout()
    fig.savefig(out / fname, dpi=110)
    plt.close(fig)
    return fname


def _efficiency(study: dict[str, Any], out: Path) -> str | None:
    rows = sorted((r for r in study["variants"] if r["kind"] in ("base", "dropped") and r.get("params_total")),
                  key=lambda r: (r.get("scorer") or "", r["blocks_kept"]))
    if not rows:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["blocks_kept"] for r in rows]
    order = sorted(range(len(rows)), key=lambda i: x[i])
    xs = [x[i] for i in order]
    for key, lab in (("latency_full_ms", "full forward (obs -> action chunk)"), ("latency_backbone_ms", "backbone only")):
        a1.plot(xs, [rows[i][key] for i in order], marker="o", label=lab)
    a1.set_ylabel(f"latency, ms (median, batch {study['settings']['bench_batch_size']}, {study['device']['type']})")
    for key, lab in (("params_total", "whole model"), ("params_backbone", "language backbone")):
        a2.plot(xs, [rows[i][key] / 1e6 for i in order], marker="o", label=lab)
    a2.set_ylabel("parameters, millions")
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("language blocks kept")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
        a.set_ylim(bottom=0)
    fig.suptitle("efficiency vs blocks kept")
    fig.tight_layout()
    fig.savefig(out / "efficiency_vs_blocks.png", dpi=110)
    plt.close(fig)
    return "efficiency_vs_blocks.png"


def _scorers(study: dict[str, Any], out: Path) -> str | None:
    sc = {n: s for n, s in study["analysis"]["scorers"].items() if s.get("per_block")}
    if not sc:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in sorted(sc.items()):
        v = s["per_block"]
        lo, hi = min(v), max(v)
        norm = [(x - lo) / (hi - lo) if hi > lo else 0.5 for x in v]  # each scorer on [0, 1]: ranks compare
        rho = s.get("spearman_vs_drop_one")
        lab = name + (f" (Spearman vs drop-one {rho:.2f})" if rho is not None else "")
        ax.plot(range(len(v)), norm, marker="o", label=lab)
    ax.set_xlabel("block index")
    ax.set_ylabel("importance (min-max normalised per scorer)")
    ax.set_xticks(range(study["base"]["num_blocks"]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("block scorers on the base model")
    fig.tight_layout()
    fig.savefig(out / "scorers.png", dpi=110)
    plt.close(fig)
    return "scorers.png"


def _budgets(study: dict[str, Any], out: Path) -> str | None:
    """Quality against recovery budget (fraction of the base's training steps): one line per pruned
    variant and method, the unpruned control dashed (budget 0 = the base model), 95% Wilson intervals."""
    curves = study.get("budget_curves") or []
    if not curves:
        return None
    use_success = any(p["success_rate"] is not None for c in curves for p in c["points"])
    key = "success_rate" if use_success else "offline_l1"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn_controls = set()

    def draw(points: list[dict[str, Any]], label: str, color: str, ls: str, marker: str) -> None:
        pts = [p for p in points if p[key] is not None]
        if not pts:
            return
        x, y = [p["fraction"] for p in pts], [p[key] for p in pts]
        if use_success and all(p.get("wilson95") for p in pts):
            err = [[yy - p["wilson95"][0] for yy, p in zip(y, pts)], [p["wilson95"][1] - yy for yy, p in zip(y, pts)]]
            ax.errorbar(x, y, yerr=err, color=color, ls=ls, marker=marker, capsize=3, label=label)
        else:
            ax.plot(x, y, color=color, ls=ls, marker=marker, label=label)

    for i, c in enumerate(curves):
        if c["method"] not in drawn_controls:
            drawn_controls.add(c["method"])
            draw(c["control"], f"unpruned + {c['method']} (control)", "black", "--", "o")
        blocks = f"{c['removed']} block{'s' if c['removed'] != 1 else ''}"
        draw(c["points"], f"{blocks} removed ({c['scorer']}), {c['method']}", colors[i % len(colors)], "-", "s")
    if use_success:
        ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("recovery budget (fraction of the base's training steps)")
    ax.set_ylabel("closed-loop success rate" if use_success else "held-out action L1 (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("quality vs recovery budget")
    fig.tight_layout()
    fig.savefig(out / "quality_vs_budget.png", dpi=110)
    plt.close(fig)
    return "quality_vs_budget.png"


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points (cost, quality) that no other point beats: none costs no more and is at least
    as good with one of the two strictly better. Ordered by cost."""
    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        ga = a[1] >= b[1] if higher_is_better else a[1] <= b[1]
        strictly = a[0] < b[0] or (a[1] > b[1] if higher_is_better else a[1] < b[1])
        return a[0] <= b[0] and ga and strictly
    front = [i for i, p in enumerate(points) if not any(beats(q, p) for j, q in enumerate(points) if j != i)]
    return sorted(front, key=lambda i: points[i][0])


_KIND_STYLE = {"base": ("*", 11), "control": ("P", 8), "dropped": ("o", 6), "recovered": ("s", 6)}


def _pareto(study: dict[str, Any], out: Path) -> str | None:
    """Quality against latency and against weight memory for every variant, float and quantized (95% Wilson
    intervals), with the Pareto front of each panel: what each cut and each quantization buys."""
    rows = study["variants"]
    use_success = any(r.get("success_rate") is not None for r in rows)
    key = "success_rate" if use_success else "offline_l1"
    rows = [r for r in rows if r.get(key) is not None and r.get("latency_full_ms") is not None]
    if len(rows) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    schemes = sorted({r["scheme"] for r in rows if r.get("scheme")})
    for ax, (cost, label, scale) in zip(axes, (("latency_full_ms", f"full forward latency, ms (median, {study['device']['type']})", 1.0),
                                              ("weight_bytes", "weights, MiB", 2.0 ** -20)), strict=True):
        pts = [r for r in rows if r.get(cost) is not None]
        for r in pts:
            kind = r.get("quantized_kind") or r["kind"]
            marker, size = _KIND_STYLE.get(kind, ("o", 6))
            color = "black" if not r.get("scheme") else colors[(1 + schemes.index(r["scheme"])) % len(colors)]
            y = r[key]
            w = r.get("success_wilson95") if use_success else None
            yerr = [[y - w[0]], [w[1] - y]] if w else None
            ax.errorbar([r[cost] * scale], [y], yerr=yerr, marker=marker, ms=size, color=color, capsize=2,
                        mfc="none" if kind == "dropped" else color, ls="none")
            ax.annotate(r["name"], (r[cost] * scale, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = pareto_front([(r[cost], r[key]) for r in pts], higher_is_better=use_success)
        ax.plot([pts[i][cost] * scale for i in front], [pts[i][key] for i in front], color="gray", ls="--", lw=1,
                drawstyle="steps-post" if use_success else "default", label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("closed-loop success rate" if use_success else "held-out action L1 (lower is better)")
        if use_success:
            ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=m, ms=s, color="black", ls="none", mfc="none" if k == "dropped" else "black",
                          label=k) for k, (m, s) in _KIND_STYLE.items()]
    handles += [plt.Line2D([], [], marker="o", color=colors[(1 + i) % len(colors)], ls="none", label=f"+ {s}")
                for i, s in enumerate(schemes)]
    handles.append(plt.Line2D([], [], color="gray", ls="--", label="Pareto front"))
    axes[1].legend(handles=handles, fontsize=7)
    fig.suptitle("quality vs cost, every variant" + (" (float and quantized)" if schemes else ""))
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)
    return "pareto.png"


def write_plots(study: dict[str, Any], out: str | Path) -> list[str]:
    """Write the study's PNGs into ``out``; returns their file names (figures without data are skipped)."""
    out = Path(out)
    made = [_quality(study, out, "success_rate", "closed-loop success rate", "success_vs_blocks.png"),
            _quality(study, out, "offline_l1", "held-out action L1 (lower is better)", "offline_l1_vs_blocks.png"),
            _efficiency(study, out), _scorers(study, out), _budgets(study, out), _pareto(study, out)]
    return [m for m in made if m]
