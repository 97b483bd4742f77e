"""Plots of an analysis: per-block bars per scorer, the angular-distance span heatmap, pathways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_blocks(analysis: dict[str, Any], blocks_path: str, out: Path) -> Path | None:
    """One bar chart per block scorer over the blocks of ``blocks_path``; the title gives Spearman vs drop-one."""
    rows = [(n, r) for n, r in analysis["scorers"].items() if r["unit"] == "block" and blocks_path in r["scores"]]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(6, 0.35 * len(rows[0][1]["scores"][blocks_path]) + 2),
                                                     1.9 * len(rows)), squeeze=False, sharex=True)
    for ax, (name, r) in zip(axes[:, 0], rows):
        vals = np.asarray(r["scores"][blocks_path], dtype=float)
        ax.bar(np.arange(len(vals)), vals, color="tab:red" if name == "drop_one" else "tab:blue")
        rho = (r.get("spearman_vs_drop_one") or {}).get(blocks_path)
        ax.set_title(f"{name}" + (f"  (Spearman vs drop-one {rho:.2f})" if rho is not None else "")
                     + f"  {r['seconds']:.2f} s", fontsize=9)
        ax.axhline(0, color="k", lw=0.5)
    axes[-1, 0].set_xlabel(f"block of {blocks_path}")
    axes[-1, 0].set_xticks(np.arange(len(rows[0][1]["scores"][blocks_path])))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_angular(analysis: dict[str, Any], blocks_path: str, out: Path) -> Path | None:
    """Heatmap of d(l, n): row n (span length), column l (first block of the span)."""
    r = analysis["scorers"].get("angular")
    spans = (r or {}).get("extras", {}).get("spans", {}).get(blocks_path)
    if not spans:
        return None
    N = len(spans)
    grid = np.full((N, N), np.nan)
    for n, row in enumerate(spans):
        grid[n, : len(row)] = row
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * N + 2), max(4, 0.3 * N + 1.5)))
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xlabel("first block l of the span")
    ax.set_ylabel("span length n - 1")
    ax.set_title(f"angular distance d(x_l, x_l+n) / pi, {blocks_path}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_pathways(analysis: dict[str, Any], out: Path) -> Path | None:
    """Drop-one and GateProbe per block for each pathway's block list, side by side on one loss scale."""
    rows = [(p, r) for p, r in analysis.get("pathways", {}).items() if "drop_one" in r or "gateprobe" in r]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.2), squeeze=False, sharey=True)
    for ax, (path, r) in zip(axes[0], rows):
        w = 0.4
        for k, (name, color) in enumerate((("drop_one", "tab:red"), ("gateprobe", "tab:blue"))):
            if name in r:
                v = np.asarray(r[name]["per_block"], dtype=float)
                ax.bar(np.arange(len(v)) + (k - 0.5) * w, v, width=w, color=color, label=name)
        ax.set_title(f"{r['pathway']}: {path}", fontsize=9)
        ax.set_xlabel("block")
        ax.axhline(0, color="k", lw=0.5)
    axes[0, 0].set_ylabel("loss increase when removed")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_plots(analysis: dict[str, Any], blocks_path: str, out_dir: Path) -> list[str]:
    """Write every plot that applies into ``out_dir``; returns the file names written."""
    made = [plot_blocks(analysis, blocks_path, out_dir / "blocks.png"),
            plot_angular(analysis, blocks_path, out_dir / "angular_spans.png"),
            plot_pathways(analysis, out_dir / "pathways.png")]
    return [p.name for p in made if p is not None]
