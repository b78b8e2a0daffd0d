"""PNG plots of a grid table (matplotlib, Agg backend: no display needed).

``plot_bars``: the table as grouped bars, one group per teacher, one bar per row, error bars = the
spread over seeds. ``plot_curves``: per teacher, one panel per row (one cell each), eval top-1 per
epoch, one line per seed. Files are written under a temporary name, then renamed.
"""
from __future__ import annotations

import os
from typing import List

import matplotlib

from fastkd.safe_paths import plain_name

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_bars(table, path: str) -> str:
    """Grouped bars: x = teachers, one coloured bar per row (mean top-1, error bar = spread)."""
    rows, cols = table.rows, table.columns
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cols) * max(len(rows), 1) * 0.45 + 2), 4.2))
    colours = plt.get_cmap("tab10")
    lows = []
    for i, row in enumerate(rows):
        stats = [table.stats(row, c) for c in cols]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j, s in enumerate(stats) if s]
        means = [s.mean for s in stats if s]
        if not means:
            continue
        lows += [s.mean - s.spread for s in stats if s]
        ax.bar(xs, means, width, yerr=[s.spread for s in stats if s], capsize=2, label=table.label(row),
               color=colours(i % 10))
    ax.set_xticks(range(len(cols)), [f"teacher {c}" for c in cols])
    ax.set_ylabel("top-1 %")
    if lows:
        ax.set_ylim(bottom=max(0.0, min(lows) - 5.0))
    ax.set_title(f"{table.student}: top-1 by teacher (mean ± std over seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_curves(table, folder: str, suffix: str = "") -> List[str]:
    """One PNG per teacher (``curves-<teacher>.png``): a panel per row, a line per seed."""
    written = []
    for col in table.columns:
        rows = [r for r in table.rows if table.cells.get((r, col))]
        if not rows:
            continue
        name = plain_name(f"curves{suffix}-{col}.png", "plot file", f"the runs under {folder}")
        n = len(rows)
        ncol = min(4, n)
        nrow = (n + ncol - 1) // ncol
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.5 * nrow), squeeze=False, sharey=True)
        for ax, row in zip(axes.flat, rows):
            for run in sorted(table.cells[(row, col)], key=lambda r: (r.seed is None, r.seed)):
                if run.curve:
                    ax.plot(*zip(*run.curve), marker=".", label=f"seed {run.seed}")
            ax.set_title(table.label(row), fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("eval top-1 %", fontsize=8)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        most = max(axes.flat, key=lambda ax: len(ax.get_legend_handles_labels()[0]))
        if most.get_legend_handles_labels()[0]:
            most.legend(fontsize=7)
        fig.suptitle(f"{table.student} with teacher {col}: training curves per cell", fontsize=10, y=1.02)
        written.append(_save(fig, os.path.join(folder, name)))
    return written
