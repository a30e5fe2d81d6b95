"""Per task: the frontier of accuracy vs speedup (or vs tokens per forward, hardware-free), plotted.

    python -m analysis.pareto SWEEP_FOLDER [...] --x speedup --out plots/
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from .collect import collect_and_report, method_label

MARKERS = {(False, "none"): "o", (True, "none"): "s", (False, "prefix"): "^", (True, "prefix"): "v",
           (False, "dual"): "D", (True, "dual"): "P"}


def pareto_mask(x, y) -> np.ndarray:
    """True for points no other point dominates (>= on both axes and > on one); both axes maximised."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.lexsort((-y, -x))  # by x descending, ties by y descending
    keep = np.zeros(len(x), bool)
    best_y = -np.inf
    for i in order:
        if y[i] > best_y:
            keep[i] = True
            best_y = y[i]
    # a point tied with a kept point on both axes is not dominated either
    for i in np.flatnonzero(~keep):
        keep[i] = not np.any((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i])))
    return keep


def frontier_table(cells: pd.DataFrame, x: str = "speedup") -> pd.DataFrame:
    """The frontier members of every task, best x first."""
    parts = []
    for _, group in cells.dropna(subset=[x, "accuracy"]).groupby("task"):
        front = group[pareto_mask(group[x], group["accuracy"])].copy()
        front["method"] = front.apply(method_label, axis=1)
        parts.append(front.sort_values(x, ascending=False))
    columns = ["task", "method", x, "accuracy", "accuracy_stderr", "nfe", "tpf"]
    return pd.concat(parts)[columns] if parts else pd.DataFrame(columns=columns)


def plot_task(cells: pd.DataFrame, task: str, x: str, folder: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    group = cells[(cells.task == task)].dropna(subset=[x, "accuracy"])
    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(sorted(group.strategy.unique()))}
    for (strategy, eotp, cache), pts in group.groupby(["strategy", "eotp", "cache"]):
        ax.errorbar(pts[x], pts["accuracy"], yerr=pts["accuracy_stderr"].fillna(0), fmt=MARKERS[eotp, cache],
                    color=colours[strategy], capsize=2, alpha=0.85,
                    label=strategy + (" +EoTP" if eotp else "") + (f" +{cache}" if cache != "none" else ""))
    front = group[pareto_mask(group[x], group["accuracy"])].sort_values(x)
    ax.plot(front[x], front["accuracy"], "k--", lw=1, label="Pareto frontier")
    base = group[(group.strategy == "baseline") & ~group.eotp & (group.cache == "none")]
    ax.scatter(base[x], base["accuracy"], marker="*", s=220, facecolor="none", edgecolor="k", label="reference: baseline")
    ax.set_xlabel({"speedup": "speedup (throughput / baseline)", "tpf": "tokens per forward"}.get(x, x))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(task)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # never over points
    fig.tight_layout()
    paths = [folder / f"pareto_{task}{'' if x == 'speedup' else '_' + x}.{ext}" for ext in ("png", "pdf", "svg")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--x", choices=["speedup", "tpf"], default="speedup")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    got = collect_and_report(args.folders)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in sorted(got.cells.task.unique()):
        print("wrote", ", ".join(map(str, plot_task(got.cells, task, args.x, args.out))))
    print(frontier_table(got.cells, args.x).to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
