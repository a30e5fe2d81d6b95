"""One command for a sweep's whole analysis: Pareto plots, frontier tables, AUP, paper tables, figures.

    python -m analysis.report SWEEP_DIR [--out FOLDER] [--formats png pdf svg] [--pool STRATEGY ...]
                              [--wandb PROJECT [--group G] [--wandb-mode offline]]

SWEEP_DIR is only read (a read-only store can be analysed); everything is written into --out (default
SWEEP_DIR/analysis): pareto_<task>.<ext> (accuracy vs speedup; tokens per forward when
the task's timings are flagged), pareto_<task>_tpf.<ext> (accuracy vs tokens per forward), the figures of
`analysis.figures`, and tables.md: skipped records, accuracy / mean NFE per method and task (the README's
embedded-default table, from `experiment=embedded_table`), a cells summary per task, the frontier members,
AUP with its comparison pool, the paper tables that the sweep's data fits (the others named as skipped),
forwards per block and padding share per task. A speed measured under flagged timing carries "†". With
--wandb the PNGs and tables are also logged to one W&B run of job_type "analysis".
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .aup import aup_board, aup_table, default_pool
from .collect import collect
from .figures import FORMATS, make_figures, padding_by_task, steps_per_block_table, with_methods
from .pareto import frontier_table, plot_task
from .style import UNTRUSTED, UNTRUSTED_NOTE, caption, column, method_order, trusted
from .tables import LAYOUTS, render_fitting

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


def speedup_text(cells: pd.DataFrame) -> pd.Series:
    """Each cell's speedup as text: the median, its IQR when recorded, and "†" when the timing is flagged."""
    q1, q3 = column(cells, "speedup_q1", np.nan), column(cells, "speedup_q3", np.nan)

    def text(v, lo, hi, ok):
        if pd.isna(v):
            return DASH
        spread = f" [{lo:.2f}–{hi:.2f}]" if pd.notna(lo) and pd.notna(hi) else ""
        return f"{v:.2f}{spread}" + ("" if ok else f" {UNTRUSTED}")
    return pd.Series([text(*v) for v in zip(cells["speedup"], q1, q3, trusted(cells))], index=cells.index,
                     dtype=object)


def _int_text(values: pd.Series) -> pd.Series:
    return values.map(lambda v: DASH if pd.isna(v) else str(int(v)))


def cells_summary(cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per task: one row per cell (method, G, block length, accuracy ± stderr, NFE, TPF, tokens/s, speedup
    [IQR] †), in `analysis.style.method_order`."""
    if cells.empty:
        return {}
    cells = with_methods(cells).loc[lambda c: method_order(c)]
    out = {}
    for task, group in cells.groupby("task", sort=True):
        out[str(task)] = pd.DataFrame({
            "method": group["method"], "G": _int_text(group["gen_length"]), "block": _int_text(group["block_length"]),
            "accuracy (%)": group["accuracy"], "± stderr": group["accuracy_stderr"], "NFE": group["nfe"],
            "TPF": group["tpf"], "tokens/s": group["tokens_per_second"], "speedup": speedup_text(group)})
    return out


def method_task_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Accuracy % / mean NFE, rows the methods (`method_label`, with G and B when the sweep has several) in
    `method_order`, columns the tasks: the README's embedded-default table."""
    if cells.empty:
        return pd.DataFrame()
    cells = with_methods(cells).loc[lambda c: method_order(c)]
    for key, name in (("gen_length", "G"), ("block_length", "B")):
        if cells[key].nunique() > 1:
            cells["method"] = cells["method"] + cells[key].map(lambda v: f", {name}={v:g}")
    text = [DASH if pd.isna(a) else f"{a:.1f} / {n:.2f}".rstrip("0").rstrip(".")
            for a, n in zip(cells["accuracy"], cells["nfe"])]
    table = cells.assign(cell=text).pivot_table(index="method", columns="task", values="cell", aggfunc="first",
                                                sort=False)
    return table.reindex(columns=sorted(table.columns, key=str)).fillna(DASH).reset_index().rename_axis(
        columns=None)


def with_gen_length(frontier: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """`analysis.pareto.frontier_table`'s rows (indexed like `cells`) with G after the method, and no repeated
    column (its x axis may also be one of its fixed columns)."""
    frontier = frontier.loc[:, ~frontier.columns.duplicated()].copy()
    if not frontier.empty and frontier.index.isin(cells.index).all():
        frontier.insert(2, "G", _int_text(cells.loc[frontier.index, "gen_length"]))
    return frontier.reset_index(drop=True)


def report_sweep(folder: str | Path, formats: Iterable[str] = FORMATS, pool: list[str] | None = None,
                 out: str | Path | None = None) -> dict:
    """The whole analysis of the sweep in `folder`, written into `out` (default `folder`/analysis).

    Returns {"tables_md": Path, "pareto": [paths], "figures": {figure: [paths]}, "paths": every file written,
    "tables": {name: DataFrame} (cells, methods_by_task, frontier_speedup, frontier_tpf, aup, steps_per_block,
    padding_share),
    "pool": the AUP comparison pool, "problems": the skipped records, "messages": figures/plots skipped}.
    Nothing here raises for missing data: a plot or table without data is skipped with a message."""
    folder, formats = Path(folder), tuple(formats)
    out = Path(out) if out else folder / "analysis"
    out.mkdir(parents=True, exist_ok=True)
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
                pareto_paths += plot_task(cells, task, x, out, formats)
            except Exception as err:
                say(f"skipped pareto_{task} ({x}): failed ({type(err).__name__}: {err})")

    frontiers = {x: with_gen_length(frontier_table(cells, x), cells) for x in X_AXES}
    pool = list(pool) if pool else default_pool(cells) if not cells.empty else []
    print(f"comparison pool: {', '.join(pool) or DASH}")
    aup = aup_table(cells, pool) if not cells.empty else pd.DataFrame(columns=["task", "method", "points", "y_max",
                                                                               "aup"])
    steps = steps_per_block_table(cells, samples)
    padding = padding_by_task(cells, samples)
    figures = make_figures(cells, samples, out, formats, log=say)

    lines = [f"# Sweep report: {folder}", "",
             f"{len(cells)} cells, {len(samples)} samples, {len(got.problems)} skipped records.", "",
             "## Skipped records", ""]
    lines += [f"- {p}" for p in got.problems] or ["none"]
    lines += ["", "## Accuracy % / mean NFE per method and task", "", caption(cells, errors=False) if tasks else "",
              "", markdown_table(method_task_table(cells))]
    measured = cells["speedup"].notna() if tasks else pd.Series(dtype=bool)
    if tasks and not trusted(cells)[measured].all():
        lines += [f"{int((~trusted(cells)[measured]).sum())} cells have flagged timings: {UNTRUSTED_NOTE}", ""]
    if tasks and not measured.all():
        lines += [f"{int((~measured).sum())} cells have no measured speedup (no paired rounds: pair_rounds=0)", ""]
    lines += ["## Cells", ""]
    for task, table in cells_summary(cells).items():
        lines += [f"### {task}", "", markdown_table(table)]
    if cells.empty:
        lines += ["no complete cells", ""]
    for x, title in X_AXES.items():
        lines += [f"## Pareto frontier ({title})", "", markdown_table(frontiers[x])]
    lines += ["## AUP", "", f"comparison pool: {', '.join(pool) or DASH}", "",
              "AUP values are comparable only inside this pool (y_max is the pool's best accuracy on the task).",
              "", markdown_table(aup),
              "### AUP board", "", "Methods ranked by AUP per task (rank in brackets) and overall: the mean over "
              "the tasks of AUP relative to the task's best in the pool.", "",
              markdown_table(aup_board(aup), floatfmt=".3f")]
    lines += ["## Paper tables", ""]
    lines += render_fitting(cells, LAYOUTS.values(), log=say) or ["no paper-table layout fits this sweep's cells", ""]
    lines += ["## Forwards", "", "### Forwards per decoded block (skipped blocks counted apart)", "",
              markdown_table(steps),
              "### Padding share per task: (G - raw_tokens) / G without EoTP, clipped at 0, mean over samples"
              " and cells", "", markdown_table(padding, floatfmt=".3f")]
    lines += ["## Figures", ""]
    for path in pareto_paths + [p for paths in figures.values() for p in paths]:
        lines += [f"![{path.stem}]({path.name})", ""] if path.suffix == ".png" else [f"- {path.name}"]
    lines += [""] + [f"- {m}" for m in messages]
    tables_md = out / "tables.md"
    tables_md.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {tables_md}")

    paths = pareto_paths + [p for ps in figures.values() for p in ps] + [tables_md]
    summary = pd.concat(list(cells_summary(cells).values()), keys=tasks, names=["task", None]).reset_index(
        level=0) if tasks else pd.DataFrame()
    return {"tables_md": tables_md, "pareto": pareto_paths, "figures": figures, "paths": paths,
            "tables": {"cells": summary, "methods_by_task": method_task_table(cells),
                       "frontier_speedup": frontiers["speedup"], "frontier_tpf": frontiers["tpf"],
                       "aup": aup, "steps_per_block": steps, "padding_share": padding},
            "pool": pool, "problems": got.problems, "messages": messages}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the sweep folder (searched for result.json, never written)")
    parser.add_argument("--out", type=Path, help="where the plots and tables.md go (default: FOLDER/analysis)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=["png", "pdf", "svg"])
    parser.add_argument("--pool", nargs="+", help="strategies in the AUP comparison pool (default: every "
                        "strategy present that decodes without the answer)")
    parser.add_argument("--wandb", metavar="PROJECT", help="also log the PNGs and tables to this W&B project "
                        "(entity/project or project)")
    parser.add_argument("--group", help="with --wandb: the run group (e.g. the sweep name)")
    parser.add_argument("--wandb-mode", default="online", choices=["online", "offline", "disabled"])
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"no such folder: {args.folder}")
    written = report_sweep(args.folder, args.formats, args.pool, args.out)
    if args.wandb:
        log_to_wandb(written, args.wandb, args.group, args.wandb_mode, written["tables_md"].parent)
    return written


def log_to_wandb(written: dict, project: str, group: str | None, mode: str, folder: Path):
    """The report's PNGs and frontier / AUP tables as the sweep's one W&B run of job type `analysis` (the sweep:
    `group`, else the folder), updated by every re-run of the report rather than joined by another."""
    from .wandb_io import analysis_run_id, log_report
    tables = {k: written["tables"][k] for k in ("frontier_speedup", "frontier_tpf", "aup")}
    sweep = group or str(folder.resolve())
    return log_report(written["paths"], tables, project, group, mode, dir=folder,
                      name=f"analysis · {group or folder.resolve().name}", run_id=analysis_run_id(project, sweep))


if __name__ == "__main__":
    main()
