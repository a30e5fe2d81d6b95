"""One command for a sweep's whole analysis: Pareto plots, frontier tables, AUP, paper tables, figures.

    python -m analysis.report SWEEP_DIR [--formats png pdf svg] [--pool baseline threshold learned]
                              [--wandb PROJECT [--group G] [--wandb-mode offline]]

Everything is written into SWEEP_DIR: pareto_<task>.<ext> (accuracy vs speedup), pareto_<task>_tpf.<ext>
(accuracy vs tokens per forward), the figures of `analysis.figures`, and tables.md (skipped records, a cells
summary per task, the frontier members, AUP with its comparison pool, the paper tables that the sweep's
data fits, forwards per block and padding share). With --wandb the PNGs and tables are also logged to one
W&B run of job_type "analysis".
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .aup import aup_table
from .collect import collect
from .figures import (FORMATS, make_figures, padding_share, safe_name, steps_per_block_table, strategy_order,
                      with_methods)
from .pareto import frontier_table, plot_task
from .tables import LAYOUTS, pick, render

DASH = "–"
X_AXES = {"speedup": "accuracy vs speedup", "tpf": "accuracy vs tokens per forward"}


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """`frame` as a markdown table; missing values show as a dash."""
    if frame.empty:
        return "_(no rows)_\n"

    def text(v):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            return DASH
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return str(v)
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(text(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def cells_summary(cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per task: one row per cell (method, G, block length, accuracy ± stderr, NFE, TPF, tokens/s, speedup),
    in strategy order then method then G."""
    if cells.empty:
        return {}
    cells = with_methods(cells)
    order = {s: i for i, s in enumerate(strategy_order(cells.strategy))}
    out = {}
    for task, group in cells.groupby("task"):
        group = group.assign(_order=group.strategy.map(order)).sort_values(["_order", "method", "gen_length"])
        out[str(task)] = pd.DataFrame({
            "method": group["method"], "G": group["gen_length"].map(lambda g: DASH if pd.isna(g) else str(int(g))),
            "block": group["block_length"].map(lambda b: DASH if pd.isna(b) else str(int(b))),
            "accuracy (%)": group["accuracy"], "± stderr": group["accuracy_stderr"], "NFE": group["nfe"],
            "TPF": group["tpf"], "tokens/s": group["tokens_per_second"], "speedup": group["speedup"]})
    return out


def with_gen_length(frontier: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """`analysis.pareto.frontier_table`'s rows (indexed like `cells`) with G after the method, and no repeated
    column (its x axis may also be one of its fixed columns)."""
    frontier = frontier.loc[:, ~frontier.columns.duplicated()].copy()
    if not frontier.empty and frontier.index.isin(cells.index).all():
        frontier.insert(2, "G", cells.loc[frontier.index, "gen_length"].map(
            lambda g: DASH if pd.isna(g) else str(int(g))))
    return frontier.reset_index(drop=True)


def layout_fits(cells: pd.DataFrame, layout) -> bool:
    """A paper table is worth writing when at least two of its columns have a cell in one (task, G) row."""
    if cells.empty or cells["gen_length"].isna().all():
        return False
    for (task, g), _ in cells.groupby(["task", "gen_length"]):
        if sum(pick(cells, task, g, column) is not None for column in layout.columns) >= 2:
            return True
    return False


def _pareto(cells: pd.DataFrame, task, x: str, folder: Path, formats: tuple[str, ...]) -> list[Path]:
    """`analysis.pareto.plot_task` into a scratch folder, keeping only the requested formats."""
    name = safe_name(task)
    if name != str(task):  # a task name that is not a file name
        cells = cells.assign(task=cells.task.where(cells.task != task, name))
    with tempfile.TemporaryDirectory() as scratch:
        made = plot_task(cells, name, x, Path(scratch))
        kept = []
        for path in made:
            if path.suffix.lstrip(".") in formats:
                target = folder / path.name
                shutil.move(str(path), target)
                kept.append(target)
    return kept


def report_sweep(folder: str | Path, formats: Iterable[str] = FORMATS, pool: list[str] | None = None) -> dict:
    """The whole analysis of the sweep in `folder`, written into `folder`.

    Returns {"tables_md": Path, "pareto": [paths], "figures": {figure: [paths]}, "paths": every file written,
    "tables": {name: DataFrame} (cells, frontier_speedup, frontier_tpf, aup, steps_per_block, padding_share),
    "pool": the AUP comparison pool, "problems": the skipped records, "messages": figures/plots skipped}.
    Nothing here raises for missing data: a plot or table without data is skipped with a message."""
    folder, formats = Path(folder), tuple(formats)
    messages: list[str] = []

    def say(message: str):
        print(message)
        messages.append(message)

    got = collect([folder])
    for problem in got.problems:
        print(f"skipped: {problem}")
    cells, samples = got.cells, got.samples
    print(f"{len(cells)} cells, {len(samples)} samples, {len(got.problems)} skipped records")
    tasks = sorted(cells.task.unique(), key=str) if not cells.empty else []

    pareto_paths = []
    for x in X_AXES:
        for task in tasks:
            if cells[cells.task == task].dropna(subset=[x, "accuracy"]).empty:
                say(f"skipped pareto_{task} ({x}): no cell has both {x} and accuracy")
                continue
            try:
                pareto_paths += _pareto(cells, task, x, folder, formats)
            except Exception as err:
                say(f"skipped pareto_{task} ({x}): failed ({type(err).__name__}: {err})")

    frontiers = {x: with_gen_length(frontier_table(cells, x), cells) for x in X_AXES}
    pool = list(pool) if pool else strategy_order(cells.strategy) if not cells.empty else []
    print(f"comparison pool: {', '.join(pool) or DASH}")
    aup = aup_table(cells, pool) if not cells.empty else pd.DataFrame(columns=["task", "method", "points", "y_max",
                                                                               "aup"])
    steps = steps_per_block_table(cells, samples)
    padding = padding_share(cells, samples)
    figures = make_figures(cells, samples, folder, formats, log=say)

    lines = [f"# Sweep report: {folder}", "",
             f"{len(cells)} cells, {len(samples)} samples, {len(got.problems)} skipped records.", "",
             "## Skipped records", ""]
    lines += [f"- {p}" for p in got.problems] or ["none"]
    lines += ["", "## Cells", ""]
    for task, table in cells_summary(cells).items():
        lines += [f"### {task}", "", markdown_table(table)]
    if cells.empty:
        lines += ["no complete cells", ""]
    for x, title in X_AXES.items():
        lines += [f"## Pareto frontier ({title})", "", markdown_table(frontiers[x])]
    lines += ["## AUP", "", f"comparison pool: {', '.join(pool) or DASH}", "",
              "AUP values are comparable only inside this pool (y_max is the pool's best accuracy on the task).",
              "", markdown_table(aup)]
    lines += ["## Paper tables", ""]
    fitting = [layout for layout in LAYOUTS.values() if layout_fits(cells, layout)]
    lines += [render(cells, layout) for layout in fitting] or ["no paper-table layout fits this sweep's cells", ""]
    lines += ["## Forwards", "", "### Forwards per decoded block (skipped blocks counted apart)", "",
              markdown_table(steps),
              "### Padding share: (G - eotp_skipped - raw_tokens) / G, clipped at 0, mean over samples", "",
              markdown_table(padding.drop(columns=["config_hash", "path", "base_method", "strategy"]),
                             floatfmt=".3f")]
    lines += ["## Figures", ""]
    for path in pareto_paths + [p for paths in figures.values() for p in paths]:
        lines += [f"![{path.stem}]({path.name})", ""] if path.suffix == ".png" else [f"- {path.name}"]
    lines += [""] + [f"- {m}" for m in messages]
    tables_md = folder / "tables.md"
    tables_md.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {tables_md}")

    paths = pareto_paths + [p for ps in figures.values() for p in ps] + [tables_md]
    summary = pd.concat(list(cells_summary(cells).values()), keys=tasks, names=["task", None]).reset_index(
        level=0) if tasks else pd.DataFrame()
    return {"tables_md": tables_md, "pareto": pareto_paths, "figures": figures, "paths": paths,
            "tables": {"cells": summary, "frontier_speedup": frontiers["speedup"], "frontier_tpf": frontiers["tpf"],
                       "aup": aup, "steps_per_block": steps, "padding_share": padding},
            "pool": pool, "problems": got.problems, "messages": messages}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the sweep folder (searched for result.json; outputs go here)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=["png", "pdf", "svg"])
    parser.add_argument("--pool", nargs="+", help="strategies in the AUP comparison pool (default: all present)")
    parser.add_argument("--wandb", metavar="PROJECT", help="also log the PNGs and tables to this W&B project "
                        "(entity/project or project)")
    parser.add_argument("--group", help="with --wandb: the run group (e.g. the sweep name)")
    parser.add_argument("--wandb-mode", default="online", choices=["online", "offline", "disabled"])
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"no such folder: {args.folder}")
    written = report_sweep(args.folder, args.formats, args.pool)
    if args.wandb:
        log_to_wandb(written, args.wandb, args.group, args.wandb_mode, args.folder)
    return written


def log_to_wandb(written: dict, project: str, group: str | None, mode: str, folder: Path):
    """The report's PNGs and frontier / AUP tables as one W&B run (job type `analysis`)."""
    from .wandb_io import log_report
    tables = {k: written["tables"][k] for k in ("frontier_speedup", "frontier_tpf", "aup")}
    return log_report(written["paths"], tables, project, group, mode, dir=folder)


if __name__ == "__main__":
    main()
