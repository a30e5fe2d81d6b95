"""Figures of a sweep beyond the Pareto plots: where the forwards go, and what the decoding knobs buy.

    python -m analysis.figures SWEEP_DIR [...] --out figures/ [--formats png pdf svg] [--only knob_sweep ...]

Figures (file stems; one file per format):
    speedup_vs_gen_length_<task>  speedup (fallback: NFE ratio) vs generation length G, one line per method
                                  (skipped when the task was run at a single G)
    steps_per_block               forwards spent per block (skipped blocks left out), per task and strategy
    redecodes                     forwards after first-correct, per generated position (needs a decoding trace)
    padding_share                 share of G that is padding after the answer, one bar per task (and G)
    knob_sweep_<task>             accuracy and tokens per forward vs each knob a method family sweeps

Every function takes the DataFrames of `analysis.collect.collect` (cells and/or samples) and an output folder
and returns the paths it wrote; a figure whose data is absent is skipped with a message, never an exception.
Colours, markers and captions come from `analysis.style` (one colour per strategy in every figure; grey for
strategies that need the reference answer; hollow markers for flagged timings). Rendering uses matplotlib's
object API on an Agg canvas (no pyplot, no global backend switch).
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from harness.decoding import knob_symbol

from .collect import collect_and_report, method_label
from .style import (UNTRUSTED, caption, colours_for, column, families, flag, marker, method_order,
                    strategy_order, swept_knob, trusted)

FORMATS = ("png", "pdf", "svg")
FIGURES = ("speedup_vs_gen_length", "steps_per_block", "redecodes", "padding_share", "knob_sweep")

Log = Callable[[str], None]


# ---------------------------------------------------------------- helpers
def safe_name(task) -> str:
    """A task name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(task)).strip("_") or "task"


def _skip(log: Log, figure: str, reason: str) -> list[Path]:
    log(f"skipped figure {figure}: {reason}")
    return []


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.4)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save(fig, out_dir: Path, stem: str, formats: Iterable[str]) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()  # once, not per format
    paths = []
    for ext in formats:
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight")  # legends placed beside the axes stay in
        paths.append(path)
    return paths


# ---------------------------------------------------------------- samples
def with_methods(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` with a `method` column (`analysis.collect.method_label`) and `base_method` (the same, EoTP off)."""
    cells = cells.copy()
    if cells.empty:
        cells["method"], cells["base_method"] = pd.Series(dtype=object), pd.Series(dtype=object)
        return cells
    cells["method"] = [method_label(row) for _, row in cells.iterrows()]
    cells["base_method"] = [method_label({**row.to_dict(), "eotp": False}) for _, row in cells.iterrows()]
    return cells


def _as_list(value) -> list | None:
    """A per-position / per-block list from a sample field (a list, or its JSON text after a CSV round trip)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [v for v in value if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return None


def _join_key(cells: pd.DataFrame, samples: pd.DataFrame | None) -> str | None:
    """The column joining samples to cells: the cell folder `path` when both sides have it, else
    `config_hash`; None when neither can join."""
    if samples is None or samples.empty or cells is None or cells.empty:
        return None
    return next((k for k in ("path", "config_hash") if k in samples.columns and k in cells.columns
                 and samples[k].notna().any()), None)


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def samples_with_cells(cells: pd.DataFrame, samples: pd.DataFrame | None, fields: Iterable[str]) -> pd.DataFrame:
    """The samples' `fields` joined with their cell's task, strategy, method, base_method, eotp, cache and
    G (the cell's gen_length); joined on the cell folder `path` when both sides have it, else `config_hash`.
    Empty when no sample has any of `fields`."""
    fields = list(fields)
    meta_columns = ["task", "strategy", "method", "base_method", "eotp", "cache", "G"]
    empty = pd.DataFrame(columns=meta_columns + fields)
    if samples is None or samples.empty or cells is None or cells.empty:
        return empty
    have = [f for f in fields if f in samples.columns]
    if not have or samples[have].isna().all().all():
        return empty
    key = _join_key(cells, samples)
    if key is None:
        return empty
    meta = with_methods(cells).rename(columns={"gen_length": "G"})[[key] + meta_columns]
    meta = meta.dropna(subset=[key]).drop_duplicates(subset=[key])
    joined = samples[[key] + have].merge(meta, on=key, how="inner")
    for f in fields:
        if f not in joined.columns:
            joined[f] = np.nan
    return joined[meta_columns + fields]


def _exploded(cells, samples, field: str, drop_zero: bool) -> pd.DataFrame:
    """One row per list entry of the samples' `field` (steps_per_block, redecodes), with the cell metadata."""
    joined = samples_with_cells(cells, samples, [field])
    if joined.empty:
        return pd.DataFrame(columns=["task", "strategy", "method", field])
    joined = joined.assign(**{field: joined[field].map(_as_list)}).dropna(subset=[field])
    long = joined.explode(field).dropna(subset=[field])
    long[field] = pd.to_numeric(long[field], errors="coerce")
    long = long.dropna(subset=[field])
    if drop_zero:
        long = long[long[field] != 0]
    return long[["task", "strategy", "method", "eotp", "G", field]]


def _panels(n: int, width: float = 5.2, height: float = 3.8, max_columns: int = 3):
    ncols = min(n, max_columns)
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols, (width * ncols, height * nrows))
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# ---------------------------------------------------------------- speedup vs G
def plot_speedup_vs_gen_length(cells: pd.DataFrame, out_dir: Path, formats: Iterable[str] = FORMATS,
                               log: Log = print) -> list[Path]:
    """Per task run at two or more G, `speedup_vs_gen_length_<task>`: x = generation length G, y = speedup
    (its IQR as error bars when recorded), one line per method (`method_label`, coloured by strategy;
    cells repeating a (method, G) are averaged; a flagged timing is a hollow marker). A task none of whose
    cells has a speedup plots the NFE ratio (baseline forwards / forwards) instead, and says so on its axis."""
    name = "speedup_vs_gen_length"
    if cells is None or cells.empty:
        return _skip(log, name, "no cells")
    data = with_methods(cells.dropna(subset=["gen_length"]))
    if data.empty:
        return _skip(log, name, "no cell has a gen_length")
    colours, paths = colours_for(cells), []
    for task, group in data.groupby("task"):
        y = "speedup" if group["speedup"].notna().any() else "nfe_ratio"
        group = group.dropna(subset=[y])
        if group["gen_length"].nunique() < 2:
            _skip(log, f"{name}_{task}", f"one generation length only (G={_g(group)}): no x axis to draw")
            continue
        group = group.assign(trusted=trusted(group), q1=column(group, "speedup_q1", np.nan).astype(float),
                             q3=column(group, "speedup_q3", np.nan).astype(float))
        fig, axes = new_figure(size=(8.8, 4.6))
        ax = axes[0, 0]
        for method in dict.fromkeys(group.loc[method_order(group), "method"]):
            pts = group[group.method == method]
            line = pts.groupby("gen_length").agg(y=(y, "mean"), q1=("q1", "mean"), q3=("q3", "mean"),
                                                 trusted=("trusted", "all")).sort_index()
            colour, shape = colours[str(pts.strategy.iloc[0])], marker(pts.eotp.iloc[0], pts.cache.iloc[0])
            g = line.index.astype(float)
            ax.plot(g, line.y, color=colour, linestyle="--" if pts.eotp.iloc[0] else "-", lw=1, label=method)
            if y == "speedup" and line.q1.notna().any():
                ax.errorbar(g, line.y, yerr=np.vstack([(line.y - line.q1).clip(lower=0).fillna(0),
                                                       (line.q3 - line.y).clip(lower=0).fillna(0)]),
                            fmt="none", ecolor=colour, capsize=2, lw=0.8)
            ax.scatter(g, line.y, marker=shape, edgecolors=colour, s=30, zorder=3,
                       facecolors=[colour if ok or y != "speedup" else "none" for ok in line.trusted])
            siblings = group[(group.strategy == pts.strategy.iloc[0]) & (group.eotp == pts.eotp.iloc[0])
                             & (group.cache == pts.cache.iloc[0])]
            knob = swept_knob(siblings)  # lines of one colour and style: their knob value at the line's end
            if knob:
                ax.annotate(f"{pts[knob].iloc[0]:g}", (g[-1], line.y.iloc[-1]), textcoords="offset points",
                            xytext=(4, 0), fontsize=6, color=colour, va="center")
        ax.axhline(1.0, color="grey", lw=0.8, zorder=0)
        lengths = sorted(group["gen_length"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks([float(g) for g in lengths], [str(int(g)) for g in lengths])
        ax.minorticks_off()
        ax.set_xlabel("generation length G")
        ax.set_ylabel("speedup (throughput / baseline)" if y == "speedup" else "NFE ratio (baseline NFE / NFE)")
        flagged = y == "speedup" and not group.trusted.all()
        ax.set_title(f"{task}: {y.replace('_', ' ')} vs G" + (f" (hollow: timing flagged {UNTRUSTED})" if flagged
                                                              else "") + "\n" + caption(group, errors=False)
                     + ("; error bars: speedup IQR" if y == "speedup" and group.q1.notna().any() else ""),
                     fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        paths += save(fig, out_dir, f"{name}_{safe_name(task)}", formats)
    return paths


def _g(cells: pd.DataFrame) -> str:
    return "/".join(str(int(g)) for g in sorted(cells["gen_length"].dropna().unique()))


# ---------------------------------------------------------------- steps per block
def steps_per_block_table(cells: pd.DataFrame, samples: pd.DataFrame | None) -> pd.DataFrame:
    """Per (task, strategy): blocks decoded (entries of `steps_per_block` > 0; 0 = skipped by EoTP), blocks
    skipped, and the mean / median / max forwards per decoded block."""
    long = _exploded(cells, samples, "steps_per_block", drop_zero=False)
    columns = ["task", "strategy", "blocks", "skipped", "mean", "median", "max"]
    if long.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (task, strategy), group in long.groupby(["task", "strategy"]):
        steps = group["steps_per_block"]
        decoded = steps[steps > 0]
        rows.append({"task": task, "strategy": strategy, "blocks": len(decoded), "skipped": int((steps == 0).sum()),
                     "mean": decoded.mean(), "median": decoded.median(), "max": decoded.max()})
    table = pd.DataFrame(rows, columns=columns)
    order = {s: i for i, s in enumerate(strategy_order(cells))}
    return table.sort_values(["task", "strategy"], key=lambda c: c.map(order) if c.name == "strategy" else c)


def plot_steps_per_block(cells: pd.DataFrame, samples: pd.DataFrame | None, out_dir: Path,
                         formats: Iterable[str] = FORMATS, log: Log = print) -> list[Path]:
    """`steps_per_block`: one panel per task, one box per strategy present (baseline, threshold, oracle,
    learned, ...) over the forwards spent in each block of each sample, pooled over the strategy's cells;
    0 entries (blocks skipped by EoTP, never fed to the model) are left out. Means are marked."""
    name = "steps_per_block"
    long = _exploded(cells, samples, "steps_per_block", drop_zero=True)
    if long.empty:
        return _skip(log, name, "no sample has a non-empty steps_per_block")
    tasks = sorted(long.task.unique(), key=str)
    colours, order = colours_for(cells), strategy_order(cells)
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks):
        group = long[long.task == task]
        strategies = [s for s in order if s in set(group.strategy)]
        data = [group.loc[group.strategy == s, "steps_per_block"].to_numpy(float) for s in strategies]
        box = ax.boxplot(data, tick_labels=strategies, patch_artist=True, showmeans=True, widths=0.6,
                         meanprops={"marker": "D", "markerfacecolor": "k", "markeredgecolor": "k", "markersize": 4})
        for patch, s in zip(box["boxes"], strategies):
            patch.set_facecolor(colours[s])
            patch.set_alpha(0.55)
        ax.set_ylabel("forwards per decoded block")
        ax.set_title(f"{task} (blocks: {', '.join(str(len(d)) for d in data)})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(caption(cells, errors=False), fontsize=8)
    return save(fig, out_dir, name, formats)


# ---------------------------------------------------------------- re-decodes
def plot_redecodes(cells: pd.DataFrame, samples: pd.DataFrame | None, out_dir: Path,
                   formats: Iterable[str] = FORMATS, log: Log = print) -> list[Path]:
    """`redecodes`: one panel per task; per strategy, the histogram (share of generated positions) of the
    number of forwards after the first one at which the model's prediction already equalled the position's
    final token, before the position was committed (the samples' `redecodes`, recorded only with a trace)."""
    name = "redecodes"
    long = _exploded(cells, samples, "redecodes", drop_zero=False)
    if long.empty:
        return _skip(log, name, "no sample has a `redecodes` trace (recorded only when decoding was traced)")
    tasks = sorted(long.task.unique(), key=str)
    fig, axes = _panels(len(tasks))
    from matplotlib.ticker import MaxNLocator
    top = int(long["redecodes"].max())
    colours, order = colours_for(cells), strategy_order(cells)
    bins = np.arange(-0.5, top + 1.5, 1.0)
    for ax, task in zip(axes, tasks):
        group = long[long.task == task]
        for s in [s for s in order if s in set(group.strategy)]:
            values = group.loc[group.strategy == s, "redecodes"].to_numpy(float)
            ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), histtype="step", lw=1.6,
                    color=colours[s], label=f"{s} (mean {values.mean():.2f}, n={len(values)})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("forwards after first-correct, before commit")
        ax.set_ylabel("share of positions")
        ax.set_title(str(task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(caption(cells, errors=False), fontsize=8)
    return save(fig, out_dir, name, formats)


# ---------------------------------------------------------------- padding share
def padding_share(cells: pd.DataFrame, samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per cell, the share of the generated region fed to the model that is padding after the answer.

    Per sample, with G its generation length (`gen_length`; the cell's when the sample lacks it),
    `raw_tokens` the answer's non-EOS tokens in the generated region and `eotp_skipped` the positions past
    the EoTP cut (never fed to the model):

        padding_share = max(0, (G - eotp_skipped - raw_tokens) / G)

    i.e. the generated positions that were fed to the model and hold end-of-text padding after the answer,
    as a fraction of G (not of the fed positions, so that the bars with and without EoTP share one scale and
    EoTP's cut shows as a lower bar). This is the no-trace estimate: it counts every non-EOS token as answer.
    A cell's value is the mean over its samples (source "samples"); a cell without usable samples falls back
    to its aggregate `raw_tokens` and `eotp_skipped` means (source "cell means"); a cell with neither is left
    out. Columns: task, strategy, method, base_method, eotp, cache, gen_length, padding_share, samples, source,
    config_hash, path.
    """
    columns = ["task", "strategy", "method", "base_method", "eotp", "cache", "gen_length", "padding_share",
               "samples", "source", "config_hash", "path"]
    if cells is None or cells.empty:
        return pd.DataFrame(columns=columns)
    cells = with_methods(cells)
    per_cell: dict = {}
    key = _join_key(cells, samples)
    if key is not None and "raw_tokens" in samples.columns:
        lengths = cells.dropna(subset=[key]).drop_duplicates(subset=[key]).set_index(key)["gen_length"]
        g = _numeric(samples, "gen_length").fillna(samples[key].map(lengths))
        fed = g - _numeric(samples, "eotp_skipped").fillna(0)
        share = ((fed - _numeric(samples, "raw_tokens")) / g).clip(lower=0)
        for k, values in share.dropna().groupby(samples[key]):
            per_cell[k] = (values.mean(), len(values), "samples")
    rows = []
    for _, cell in cells.iterrows():
        got = per_cell.get(cell[key]) if key is not None else None
        g, raw, skipped = cell.get("gen_length"), cell.get("raw_tokens"), cell.get("eotp_skipped")
        if got is None and pd.notna(g) and g and pd.notna(raw):
            skipped = 0 if pd.isna(skipped) else skipped
            got = (max(0.0, (g - skipped - raw) / g), 0, "cell means")
        if got is None:
            continue
        rows.append({**{c: cell.get(c) for c in ("task", "strategy", "method", "base_method", "eotp", "cache",
                                                 "gen_length", "config_hash", "path")},
                     "padding_share": float(got[0]), "samples": got[1], "source": got[2]})
    return pd.DataFrame(rows, columns=columns)


def padding_by_task(cells: pd.DataFrame, samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """One padding share per (task, G): the mean `padding_share` of the cells run without EoTP (what an EoTP
    cut can save; with EoTP the cut itself lowers it). Columns: task, G, padding_share, cells."""
    table = padding_share(cells, samples)
    table = table[~table.eotp.astype(bool)]
    columns = ["task", "G", "padding_share", "cells"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    out = table.groupby(["task", "gen_length"]).agg(padding_share=("padding_share", "mean"),
                                                    cells=("padding_share", "size")).reset_index()
    return out.rename(columns={"gen_length": "G"})[columns]


def plot_padding_share(cells: pd.DataFrame, samples: pd.DataFrame | None, out_dir: Path,
                       formats: Iterable[str] = FORMATS, log: Log = print) -> list[Path]:
    """`padding_share`: one bar per task (per G when several): the share of G holding padding after the
    answer and fed to the model without EoTP (`padding_by_task`)."""
    name = "padding_share"
    table = padding_by_task(cells, samples)
    if table.empty:
        return _skip(log, name, "no cell without EoTP has raw_tokens (per sample or aggregate)")
    fig, axes = new_figure(size=(max(4.8, 1.1 * len(table) + 1.5), 3.8))
    ax = axes[0, 0]
    several = table.G.nunique() > 1
    labels = [f"{t}, G={int(g)}" if several else str(t) for t, g in zip(table.task, table.G)]
    bars = ax.bar(labels, 100 * table.padding_share, color="0.55", edgecolor="k", linewidth=0.5)
    ax.bar_label(bars, fmt="%.0f %%", fontsize=8)
    ax.set_ylabel("padding after the answer (% of G)")
    ax.set_ylim(0, 100)
    ax.set_title("padding fed to the model without EoTP, mean over samples and cells\n"
                 + caption(cells, errors=False), fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save(fig, out_dir, name, formats)


# ---------------------------------------------------------------- knob sweeps
def knob_sweeps(cells: pd.DataFrame):
    """(strategy, knob) -> the cells of every method family of that strategy that sweeps that knob."""
    found: dict = {}
    for _, knob, family in families(cells):
        if knob and not flag(family, "needs_reference").all():
            key = (str(family.strategy.iloc[0]), knob)
            found[key] = pd.concat([found[key], family]) if key in found else family
    return found


def plot_knob_sweep(cells: pd.DataFrame, out_dir: Path, formats: Iterable[str] = FORMATS,
                    log: Log = print) -> list[Path]:
    """Per task, `knob_sweep_<task>`: one row per (strategy, knob) the sweep varies, accuracy (± stderr) and
    tokens per forward against the knob's values; one line per family (G, B, EoTP, cache, other knobs);
    the reference's accuracy as a grey line."""
    name = "knob_sweep"
    if cells is None or cells.empty:
        return _skip(log, name, "no cells")
    colours, paths = colours_for(cells), []
    for task, group in cells.groupby("task"):
        sweeps = knob_sweeps(group.dropna(subset=["accuracy"]))
        if not sweeps:
            _skip(log, f"{name}_{task}", "no method family sweeps a knob (one value per knob)")
            continue
        fig, axes = new_figure(len(sweeps), 2, (11.5, 3.6 * len(sweeps)))
        reference = group[flag(group, "is_reference")]
        for (acc_ax, tpf_ax), ((strategy, knob), cells_) in zip(axes, sweeps.items()):
            for label, _, family in families(cells_):
                eotp = bool(family.eotp.iloc[0])
                style = {"marker": marker(eotp, family.cache.iloc[0]), "linestyle": "--" if eotp else "-",
                         "color": colours[strategy], "label": label}
                acc_ax.errorbar(family[knob], family["accuracy"], yerr=family["accuracy_stderr"].fillna(0),
                                capsize=2, **style)
                tpf_ax.plot(family[knob], family["tpf"], **style)
            for _, ref in reference.iterrows():
                acc_ax.axhline(ref.accuracy, color="0.5", lw=0.8, linestyle=":",
                               label=f"reference: {method_label(ref)}")
            acc_ax.set_ylabel("accuracy (%)")
            tpf_ax.set_ylabel("tokens per forward")
            for ax in (acc_ax, tpf_ax):
                ax.set_xlabel(f"{strategy}: {knob_symbol(strategy, knob)}")
                ax.grid(alpha=0.3)
            tpf_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        fig.suptitle(f"{task}: knob sweeps (grey dotted: the reference's accuracy)\n"
                     f"{caption(group, speedup=False)}", fontsize=9)
        paths += save(fig, out_dir, f"{name}_{safe_name(task)}", formats)
    return paths


# ---------------------------------------------------------------- all
def make_figures(cells: pd.DataFrame, samples: pd.DataFrame | None, out_dir: Path, formats: Iterable[str] = FORMATS,
                 only: Iterable[str] | None = None, log: Log = print) -> dict[str, list[Path]]:
    """Every figure above (or those named in `only`); figure name -> paths written ([] when skipped).
    A figure that fails is reported through `log` and left out; it never raises."""
    formats = tuple(formats)
    makers = {
        "speedup_vs_gen_length": lambda: plot_speedup_vs_gen_length(cells, out_dir, formats, log),
        "steps_per_block": lambda: plot_steps_per_block(cells, samples, out_dir, formats, log),
        "redecodes": lambda: plot_redecodes(cells, samples, out_dir, formats, log),
        "padding_share": lambda: plot_padding_share(cells, samples, out_dir, formats, log),
        "knob_sweep": lambda: plot_knob_sweep(cells, out_dir, formats, log),
    }
    written = {}
    for name in (only or FIGURES):
        try:
            written[name] = makers[name]()
        except Exception as err:  # a figure must never take the report down
            log(f"skipped figure {name}: failed ({type(err).__name__}: {err})")
            written[name] = []
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders (searched for result.json)")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder (default: figures/)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=["png", "pdf", "svg"])
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="only these figures")
    args = parser.parse_args(argv)
    got = collect_and_report(args.folders)
    written = make_figures(got.cells, got.samples, args.out, args.formats, args.only)
    for name, paths in written.items():
        if paths:
            print(f"{name}: wrote {', '.join(map(str, paths))}")
    return written


if __name__ == "__main__":
    main()
