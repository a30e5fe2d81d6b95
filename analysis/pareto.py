"""Per task: the frontier of accuracy vs speedup (or vs tokens per forward, hardware-free), plotted.

    python -m analysis.pareto SWEEP_FOLDER [...] --x speedup --out plots/

A method family that sweeps a knob is one connected curve with its knob values marked; the frontier is a
staircase over the competitors; cells that need the reference answer (the oracle) are grey dotted
references outside the frontier; the plain baseline (`is_reference`) is the reference star; a cell whose
timing is flagged is hollow, and a task most of whose timings are flagged falls back to tokens per forward
on its speedup plot (its title says so).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from harness.decoding import knob_symbol

from .collect import collect_and_report, method_label
from .figures import FORMATS, new_figure, safe_name, save
from .style import UNTRUSTED, caption, colours_for, column, families, flag, marker, method_order, trusted

AXIS_LABELS = {"speedup": "speedup (throughput / baseline)", "tpf": "tokens per forward"}


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


def competitors(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells that may sit on a frontier: not those that need the reference answer to decode."""
    return cells[~flag(cells, "needs_reference")]


def frontier_table(cells: pd.DataFrame, x: str = "speedup") -> pd.DataFrame:
    """The frontier members of every task (cells needing the reference answer left out), best x first; a
    speedup measured under flagged timing is marked."""
    parts = []
    for _, group in competitors(cells).dropna(subset=[x, "accuracy"]).groupby("task"):
        front = group[pareto_mask(group[x], group["accuracy"])].copy()
        front["method"] = front.apply(method_label, axis=1)
        if x == "speedup":
            front["method"] = front["method"] + np.where(trusted(front), "", f" {UNTRUSTED}")
        parts.append(front.sort_values(x, ascending=False))
    columns = ["task", "method", x, "accuracy", "accuracy_stderr", "nfe", "tpf"]
    return pd.concat(parts)[columns] if parts else pd.DataFrame(columns=columns)


def axis_for(group: pd.DataFrame, x: str) -> tuple[str, str]:
    """The x column to draw and a note: speedup falls back to tokens per forward when most of the task's
    timings are flagged (a few flagged cells are drawn hollow instead)."""
    untrusted = int((~trusted(group)).sum())
    if x == "speedup" and 2 * untrusted > len(group):
        return "tpf", (f"timings flagged on {untrusted} of {len(group)} cells: "
                       "x is tokens per forward instead of speedup")
    return x, ""


def _xerr(pts: pd.DataFrame, x: str):
    """Speedup IQR as asymmetric x error bars, when the records have it."""
    if x != "speedup":
        return None
    q1, q3 = column(pts, "speedup_q1", np.nan).astype(float), column(pts, "speedup_q3", np.nan).astype(float)
    if q1.isna().all():
        return None
    return np.vstack([(pts[x] - q1).clip(lower=0).fillna(0), (q3 - pts[x]).clip(lower=0).fillna(0)])


def draw(ax, cells: pd.DataFrame, x: str, colours: dict):
    """Every cell of `cells` on `ax` (x vs accuracy): families as curves, references apart, frontier."""
    from matplotlib.lines import Line2D
    for label, knob, family in families(cells.drop(index=cells.index[flag(cells, "is_reference")])):
        first = family.iloc[0]
        colour, shape = colours[str(first["strategy"])], marker(first["eotp"], first["cache"])
        oracle = bool(first.get("needs_reference", False))
        ax.plot(family[x], family["accuracy"], linestyle=":" if oracle else "-", color=colour, lw=1, alpha=0.8,
                zorder=2)
        ax.errorbar(family[x], family["accuracy"], yerr=family["accuracy_stderr"].fillna(0),
                    xerr=_xerr(family, x), fmt="none", ecolor=colour, elinewidth=0.8, capsize=2, alpha=0.7)
        solid = trusted(family).to_numpy() if x == "speedup" else np.ones(len(family), bool)
        for filled in (True, False):
            pts = family[solid == filled]
            ax.scatter(pts[x], pts["accuracy"], marker=shape, s=36, zorder=3, edgecolors=colour, linewidths=1.2,
                       facecolors=colour if filled and not oracle else "none",
                       linestyle=":" if oracle else "-")
        ax.plot([], [], marker=shape, color=colour, linestyle=":" if oracle else "-",
                markerfacecolor="none" if oracle else colour,
                label=label + (f" ({knob_symbol(family.strategy.iloc[0], knob)} swept)" if knob else "") + (" — needs the answer: reference" if oracle
                                                                        else ""))
        if knob:
            for _, p in family.iterrows():
                ax.annotate(f"{p[knob]:g}" if isinstance(p[knob], (int, float)) else str(p[knob]),
                            (p[x], p["accuracy"]), textcoords="offset points", xytext=(3, 4), fontsize=6,
                            color=colour)
    reference = cells[flag(cells, "is_reference")]
    if not reference.empty:
        ax.scatter(reference[x], reference["accuracy"], marker="*", s=200, facecolor="none", edgecolor="k",
                   zorder=4, label="reference: " + method_label(reference.iloc[0]))
    front = competitors(cells)
    front = front[pareto_mask(front[x], front["accuracy"])].sort_values(x)
    if not front.empty:  # from the left edge: below the first member's x its accuracy is reachable too
        xs = [min(cells[x].min(), front[x].iloc[0]), *front[x]]
        ax.step(xs, [front["accuracy"].iloc[0], *front["accuracy"]], where="pre", color="k", linestyle="--", lw=0.9,
                zorder=1, label="Pareto frontier (oracle excluded)")
        ax.scatter(front[x], front["accuracy"], s=110, facecolors="none", edgecolors="k", linewidths=0.6, zorder=2)
    if x == "speedup" and not trusted(cells).all():
        ax.add_line(Line2D([], [], marker="o", markerfacecolor="none", color="k", linestyle="none",
                           label=f"hollow: timing flagged {UNTRUSTED}"))


def plot_task(cells: pd.DataFrame, task: str, x: str, folder: Path, formats=FORMATS) -> list[Path]:
    """`pareto_<task>[_tpf].<ext>`: accuracy vs `x` of the task's cells (see the module docstring)."""
    group = cells[(cells.task == task)].dropna(subset=["accuracy"])
    drawn, note = axis_for(group, x)
    group = group.dropna(subset=[drawn]).loc[lambda g: method_order(g)]
    fig, axes = new_figure(size=(9.6, 5.0))
    ax = axes[0, 0]
    draw(ax, group, drawn, colours_for(cells))
    ax.set_xlabel(AXIS_LABELS.get(drawn, drawn))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("\n".join([f"{task}: accuracy vs {AXIS_LABELS.get(drawn, drawn)}", *[note] * bool(note),
                            caption(group, speedup=drawn == "speedup")]), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # never over points
    return save(fig, folder, f"pareto_{safe_name(task)}{'' if x == 'speedup' else '_' + x}", formats)


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
