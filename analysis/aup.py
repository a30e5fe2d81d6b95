"""AUP, accuracy under parallelism (d3LLM's definition), inside a declared comparison pool.

    python -m analysis.aup SWEEP_FOLDER [--pool STRATEGY ...]

Per (method, task): points (rho = tokens per forward, y = accuracy %) sorted by rho; points more than 5
accuracy points below the first are dropped; with W(y) = min(1, exp(-3 (1 - y / y_max))) and y_max the best
accuracy of the task inside the pool,
    AUP = rho_1 y_1 + sum_i (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2.
AUP values are only comparable inside one pool, so the pool and its y_max are printed with every score.
The default pool is every strategy of the sweep that decodes without the reference answer (an oracle is a
reference, not a competitor).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from .collect import collect_and_report
from .style import flag, strategy_order

DROP_POINTS = 5.0


def aup(points: list[tuple[float, float]], y_max: float) -> float:
    """AUP of one method's (tokens per forward, accuracy %) points."""
    pts = sorted(points)
    if not pts:
        return float("nan")
    first = pts[0][1]
    pts = [(rho, y) for rho, y in pts if y >= first - DROP_POINTS]

    def weighted(y):
        return y * min(1.0, math.exp(-3 * (1 - y / y_max)))
    score = pts[0][0] * pts[0][1]
    for (rho0, y0), (rho1, y1) in zip(pts, pts[1:]):
        score += (rho1 - rho0) * (weighted(y1) + weighted(y0)) / 2
    return score


def method_family(row) -> str:
    """The method a point belongs to: its strategy and loop switches; the strategy's knob varies along it."""
    name = row["strategy"] + (" +EoTP" if row["eotp"] else "")
    return name + (f" +{row['cache']}" if row["cache"] != "none" else "")


def default_pool(cells: pd.DataFrame) -> list[str]:
    """The strategies present whose cells decode without the reference answer."""
    return [s for s in strategy_order(cells) if s not in set(cells.loc[flag(cells, "needs_reference"), "strategy"])]


def aup_table(cells: pd.DataFrame, pool: list[str] | None = None) -> pd.DataFrame:
    """AUP per (task, method) over the methods of `pool` (strategy names; None: `default_pool`)."""
    cells = cells.dropna(subset=["tpf", "accuracy"])
    cells = cells[cells.strategy.isin(pool or default_pool(cells))]
    rows = []
    for task, group in cells.groupby("task"):
        y_max = group["accuracy"].max()
        family = group.apply(method_family, axis=1)
        if group.gen_length.nunique() > 1:  # one curve per G: AUP does not mix generation lengths
            family = family + group.gen_length.map(lambda g: f" G={g:g}")
        for method, pts in group.groupby(family):
            rows.append({"task": task, "method": method, "points": len(pts), "y_max": y_max,
                         "aup": aup(list(zip(pts["tpf"], pts["accuracy"])), y_max)})
    return pd.DataFrame(rows, columns=["task", "method", "points", "y_max", "aup"])


def aup_board(table: pd.DataFrame) -> pd.DataFrame:
    """Methods ranked by AUP: one column per task (the AUP, its rank in brackets) and `overall`, the mean AUP
    over the tasks each method ran, divided per task by the task's best AUP first so that no task dominates
    by its scale (1.0 = best on every task). Methods missing a task are ranked on the tasks they ran, and
    the `tasks` column says how many."""
    if table.empty:
        return pd.DataFrame(columns=["rank", "method", "overall", "tasks"])
    scores = table.pivot_table(index="method", columns="task", values="aup", aggfunc="first")
    relative = scores / scores.max()
    board = pd.DataFrame({"overall": relative.mean(axis=1), "tasks": scores.notna().sum(axis=1)})
    for task in scores.columns:
        ranks = scores[task].rank(ascending=False, method="min")
        board[task] = [f"{v:.2f} ({r:.0f})" if pd.notna(v) else "" for v, r in zip(scores[task], ranks)]
    board = board.sort_values("overall", ascending=False).reset_index()
    board.insert(0, "rank", range(1, len(board) + 1))
    return board


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--pool", nargs="+", help="strategies in the comparison pool (default: every strategy "
                        "present that decodes without the answer)")
    args = parser.parse_args(argv)
    got = collect_and_report(args.folders)
    pool = args.pool or default_pool(got.cells)
    print(f"comparison pool: {', '.join(pool)}")
    table = aup_table(got.cells, pool)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    print("\n" + aup_board(table).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
