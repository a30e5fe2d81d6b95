"""Figures of a sweep beyond the Pareto plots: where the forwards go, and what the decoding knobs buy.

    python -m analysis.figures SWEEP_DIR [...] --out figures/ [--formats png pdf svg] [--only tau_sweep ...]

Figures (file stems; one file per format):
    speedup_vs_gen_length_<task>  speedup (fallback: NFE ratio) vs generation length G, one line per method
    steps_per_block               forwards spent per block (skipped blocks left out), per task and strategy
    redecodes                     forwards after first-correct, per generated position (needs a decoding trace)
    padding_share                 share of the generated region fed to the model that is padding after the
                                  answer, per cell, bars per method with and without EoTP side by side
    tau_sweep_<task>              accuracy and tokens per forward vs the confidence threshold tau

Every function takes the DataFrames of `analysis.collect.collect` (cells and/or samples) and an output folder
and returns the paths it wrote; a figure whose data is absent is skipped with a message, never an exception.
Rendering uses matplotlib's object API on an Agg canvas (no pyplot, no global backend switch).
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .collect import collect_and_report, method_label

FORMATS = ("png", "pdf", "svg")
STRATEGY_ORDER = ("baseline", "threshold", "oracle", "learned", "entropy_bounded", "factor")
FIGURES = ("speedup_vs_gen_length", "steps_per_block", "redecodes", "padding_share", "tau_sweep")

Log = Callable[[str], None]


# ---------------------------------------------------------------- helpers
def safe_name(task) -> str:
    """A task name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(task)).strip("_") or "task"


def _skip(log: Log, figure: str, reason: str) -> list[Path]:
    log(f"skipped figure {figure}: {reason}")
    return []


def _new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.4)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, out_dir: Path, stem: str, formats: Iterable[str]) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()  # once, not per format
    paths = []
    for ext in formats:
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


def strategy_order(values) -> list[str]:
    """The strategies in `values`, in the order baseline, threshold, oracle, learned, ..., then the rest."""
    present = [s for s in pd.unique(pd.Series(values).dropna())]
    return [s for s in STRATEGY_ORDER if s in present] + sorted(s for s in present if s not in STRATEGY_ORDER)


def _colour(strategy: str):
    import matplotlib
    order = list(STRATEGY_ORDER)
    index = order.index(strategy) if strategy in order else len(order) + sum(map(ord, strategy))
    return matplotlib.colormaps["tab10"](index % 10)


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
    fig, axes = _new_figure(nrows, ncols, (width * ncols, height * nrows))
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# ---------------------------------------------------------------- speedup vs G
def plot_speedup_vs_gen_length(cells: pd.DataFrame, out_dir: Path, formats: Iterable[str] = FORMATS,
                               log: Log = print) -> list[Path]:
    """Per task, `speedup_vs_gen_length_<task>`: x = generation length G, y = speedup, one line per method
    (`method_label`; cells repeating a (method, G) are averaged). A task none of whose cells has a speedup
    plots the NFE ratio (baseline forwards / forwards) instead, and says so on its axis."""
    name = "speedup_vs_gen_length"
    if cells is None or cells.empty:
        return _skip(log, name, "no cells")
    data = with_methods(cells.dropna(subset=["gen_length"]))
    if data.empty:
        return _skip(log, name, "no cell has a gen_length")
    paths = []
    for task, group in data.groupby("task"):
        y = "speedup" if group["speedup"].notna().any() else "nfe_ratio"
        group = group.dropna(subset=[y])
        if group.empty:
            _skip(log, f"{name}_{task}", "no cell has a speedup or an NFE ratio")
            continue
        fig, axes = _new_figure(size=(6.8, 4.6))
        ax = axes[0, 0]
        styles = ["-", "--", ":", "-."]
        for i, (method, pts) in enumerate(sorted(group.groupby("method"), key=lambda kv: (
                strategy_order(group.strategy).index(kv[1].strategy.iloc[0]), kv[0]))):
            line = pts.groupby("gen_length")[y].mean().sort_index()
            strategy = pts.strategy.iloc[0]
            ax.plot(line.index.astype(float), line.values, marker="o" if not pts.eotp.iloc[0] else "s",
                    linestyle=styles[i % len(styles)], color=_colour(strategy), label=method, alpha=0.9)
        ax.axhline(1.0, color="grey", lw=0.8, zorder=0)
        lengths = sorted(group["gen_length"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks([float(g) for g in lengths], [str(int(g)) for g in lengths])
        ax.minorticks_off()
        ax.set_xlabel("generation length G")
        ax.set_ylabel("speedup (throughput / baseline)" if y == "speedup" else "NFE ratio (baseline NFE / NFE)")
        ax.set_title(str(task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        paths += _save(fig, out_dir, f"{name}_{safe_name(task)}", formats)
    return paths


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
    order = {s: i for i, s in enumerate(strategy_order(table.strategy))}
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
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks):
        group = long[long.task == task]
        strategies = strategy_order(group.strategy)
        data = [group.loc[group.strategy == s, "steps_per_block"].to_numpy(float) for s in strategies]
        box = ax.boxplot(data, tick_labels=strategies, patch_artist=True, showmeans=True, widths=0.6,
                         meanprops={"marker": "D", "markerfacecolor": "k", "markeredgecolor": "k", "markersize": 4})
        for patch, s in zip(box["boxes"], strategies):
            patch.set_facecolor(_colour(s))
            patch.set_alpha(0.55)
        ax.set_ylabel("forwards per decoded block")
        ax.set_title(f"{task} (blocks: {', '.join(str(len(d)) for d in data)})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, out_dir, name, formats)


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
    bins = np.arange(-0.5, top + 1.5, 1.0)
    for ax, task in zip(axes, tasks):
        group = long[long.task == task]
        for s in strategy_order(group.strategy):
            values = group.loc[group.strategy == s, "redecodes"].to_numpy(float)
            ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), histtype="step", lw=1.6,
                    color=_colour(s), label=f"{s} (mean {values.mean():.2f}, n={len(values)})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("forwards after first-correct, before commit")
        ax.set_ylabel("share of positions")
        ax.set_title(str(task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out_dir, name, formats)


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


def plot_padding_share(cells: pd.DataFrame, samples: pd.DataFrame | None, out_dir: Path,
                       formats: Iterable[str] = FORMATS, log: Log = print) -> list[Path]:
    """`padding_share`: one panel per task; per (method without EoTP, G) a pair of bars, without and with
    EoTP, of `padding_share` (see there; cells repeating a setting are averaged)."""
    name = "padding_share"
    table = padding_share(cells, samples)
    if table.empty:
        return _skip(log, name, "no cell has raw_tokens (per sample or aggregate)")
    tasks = sorted(table.task.unique(), key=str)
    groups_max = max(table[table.task == t].groupby(["base_method", "gen_length"]).ngroups for t in tasks)
    fig, axes = _panels(len(tasks), width=max(5.2, 0.6 * groups_max + 1.5), height=4.2, max_columns=1)
    width = 0.4
    for ax, task in zip(axes, tasks):
        group = table[table.task == task]
        means = group.groupby(["base_method", "gen_length", "eotp"])["padding_share"].mean()
        keys = sorted({(m, g) for m, g, _ in means.index}, key=lambda mg: (
            strategy_order(group.strategy).index(group.loc[group.base_method == mg[0], "strategy"].iloc[0]),
            mg[0], mg[1]))
        x = np.arange(len(keys))
        for offset, eotp, hatch in ((-width / 2, False, None), (width / 2, True, "//")):
            heights = [100 * means.get((m, g, eotp), np.nan) for m, g in keys]
            colours = [_colour(group.loc[group.base_method == m, "strategy"].iloc[0]) for m, _ in keys]
            ax.bar(x + offset, np.nan_to_num(heights), width, color=colours, alpha=0.8 if eotp else 0.45,
                   hatch=hatch, edgecolor="k", linewidth=0.5, label="+EoTP" if eotp else "no EoTP")
            for xi, h in zip(x + offset, heights):
                if np.isnan(h):
                    ax.text(xi, 1, "–", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"{m}, G={int(g)}" for m, g in keys], fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("padding fed after the answer (% of G)")
        ax.set_ylim(0, 100)
        ax.set_title(str(task))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    return _save(fig, out_dir, name, formats)


# ---------------------------------------------------------------- tau sweep
def plot_tau_sweep(cells: pd.DataFrame, out_dir: Path, formats: Iterable[str] = FORMATS,
                   log: Log = print) -> list[Path]:
    """Per task, `tau_sweep_<task>`: two panels, accuracy (± stderr) and tokens per forward vs the threshold
    tau, over the `strategy == "threshold"` cells; one line per (G, EoTP, cache) setting."""
    name = "tau_sweep"
    if cells is None or cells.empty:
        return _skip(log, name, "no cells")
    data = cells[(cells.strategy == "threshold")]
    data = data.dropna(subset=["threshold"]) if "threshold" in data else data.iloc[0:0]  # a knob column
    if data.empty:
        return _skip(log, name, "no threshold-strategy cells")
    paths = []
    for task, group in data.groupby("task"):
        import matplotlib
        fig, axes = _new_figure(1, 2, (10.5, 4.2))
        acc_ax, tpf_ax = axes[0]
        settings = group.groupby(["gen_length", "eotp", "cache"], dropna=False)
        for i, ((g, eotp, cache), pts) in enumerate(settings):
            pts = pts.groupby("threshold")[["accuracy", "accuracy_stderr", "tpf"]].mean().sort_index()
            label = (f"G={int(g)}" if pd.notna(g) else "G=?") + (" +EoTP" if eotp else "") + \
                (f" +{cache}" if cache not in ("none", None) and pd.notna(cache) else "")
            style = {"marker": "s" if eotp else "o", "linestyle": "--" if eotp else "-",
                     "color": matplotlib.colormaps["tab10"](i % 10), "label": label}
            acc_ax.errorbar(pts.index, pts["accuracy"], yerr=pts["accuracy_stderr"].fillna(0), capsize=2, **style)
            tpf_ax.plot(pts.index, pts["tpf"], **style)
        acc_ax.set_ylabel("accuracy (%)")
        tpf_ax.set_ylabel("tokens per forward")
        for ax in (acc_ax, tpf_ax):
            ax.set_xlabel("threshold τ")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{task}: confidence threshold sweep")
        paths += _save(fig, out_dir, f"{name}_{safe_name(task)}", formats)
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
        "tau_sweep": lambda: plot_tau_sweep(cells, out_dir, formats, log),
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
