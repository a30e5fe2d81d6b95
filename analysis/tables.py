"""Paper tables from stored runs, as markdown and LaTeX (booktabs, escaped, from pandas' `Styler.to_latex`;
the column settings and what was measured in its caption).

    python -m analysis.tables SWEEP_FOLDER [...] --out tables.md [--latex tables.tex]

Each layout declares the cell that fills each column by the paper's own settings (reference:
decoding-algorithms.md §1.9, §3.4): Learn2PD Table 1 (LLaDA | Learn2PD | EoTP | Learn2PD & EoTP, τ_f 0.96;
cell tokens/s / speedup / score), Learn2PD Table 2 (KV cache: Learn2PD & EoTP | + Dual Cache | + Prefix
Cache) and Fast-dLLM Table 1 (LLaDA | +Cache (prefix, one token per step) | +Parallel (threshold 0.9) |
+Cache+Parallel; cell accuracy / tokens/s (speedup)). Rows are the (task, G, B) of the sweep. A column's
cell is never replaced by another setting: a cell not run shows "–", and a layout none of whose rows has
two of its columns, or that lacks a strategy it compares, is skipped with a message. The knob values used
are printed under every table, and a cell whose timing is flagged carries "†".
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .collect import collect_and_report, method_label
from .style import UNTRUSTED, UNTRUSTED_NOTE, caption, column, knob_names, trusted

DASH = "–"
ROW_KEYS = {"task": "Task", "gen_length": "G", "block_length": "B"}


@dataclass(frozen=True)
class Column:
    label: str
    strategy: str
    knobs: dict = field(default_factory=dict, hash=False)  # the paper's values of the strategy's own knobs
    eotp: bool = False
    cache: str = "none"

    def describe(self) -> str:
        return method_label({"strategy": self.strategy, "knobs": dict(self.knobs), **self.knobs,
                             "eotp": self.eotp, "cache": self.cache})


@dataclass(frozen=True)
class Layout:
    title: str
    columns: tuple[Column, ...]
    cell: str  # "learn2pd": tokens/s / speedup / score; "fastdllm": accuracy / tokens/s (speedup)

    @property
    def cell_note(self) -> str:
        return "tokens/s / speedup / score" if self.cell == "learn2pd" else "accuracy / tokens/s (speedup)"


TAU_F = {"filter_threshold": 0.96}  # Learn2PD's accept_thres in every eval script
LEARN2PD_TABLE1 = Layout("Learn2PD Table 1", (
    Column("LLaDA", "baseline"), Column("Learn2PD", "learned", TAU_F), Column("EoTP", "baseline", eotp=True),
    Column("Learn2PD & EoTP", "learned", TAU_F, eotp=True)), "learn2pd")
LEARN2PD_KV = Layout("Learn2PD Table 2 (KV cache)", (
    Column("Learn2PD & EoTP", "learned", TAU_F, eotp=True),
    Column("+ Dual Cache", "learned", TAU_F, eotp=True, cache="dual"),
    Column("+ Prefix Cache", "learned", TAU_F, eotp=True, cache="prefix")), "learn2pd")
TAU = {"threshold": 0.9}  # Fast-dLLM's default, used in its Table 1
FASTDLLM_TABLE1 = Layout("Fast-dLLM Table 1", (
    Column("LLaDA", "baseline"), Column("+Cache", "baseline", cache="prefix"),
    Column("+Parallel", "threshold", TAU), Column("+Cache+Parallel", "threshold", TAU, cache="prefix")), "fastdllm")
LAYOUTS = {"learn2pd": LEARN2PD_TABLE1, "learn2pd_kv": LEARN2PD_KV, "fastdllm": FASTDLLM_TABLE1}


def _same(value, wanted) -> bool:
    if wanted is None or (isinstance(wanted, float) and np.isnan(wanted)):
        return value is None or pd.isna(value)
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return pd.notna(value) and np.isclose(float(value), float(wanted))
    return value == wanted


def matches(cells: pd.DataFrame, column_: Column) -> pd.DataFrame:
    """The cells run with the column's setting: its strategy, loop switches and declared knob values.
    Cells whose other knobs are unset come first (a variant with an extra knob is not the paper's method)."""
    found = cells[(cells.strategy == column_.strategy) & (cells.eotp.astype(bool) == column_.eotp)
                  & (cells.cache == column_.cache)]
    for knob, wanted in column_.knobs.items():
        found = found[column(found, knob, None).map(lambda v: _same(v, wanted)).astype(bool)]
    others = [k for k in knob_names(cells) if k not in column_.knobs]
    unset = found[others].notna().sum(axis=1) if others else pd.Series(0, index=found.index)
    return found.assign(_extra=unset).sort_values(["_extra", "config_hash"]).drop(columns="_extra")


def row_keys(cells: pd.DataFrame) -> list[str]:
    return ["model", *ROW_KEYS] if cells["model"].nunique() > 1 else list(ROW_KEYS)


def _number(value, spec=".2f") -> str | None:
    return None if value is None or pd.isna(value) else format(value, spec)


def cell_text(cell: pd.Series, layout: Layout) -> str:
    mark = "" if trusted(cell.to_frame().T).iloc[0] else UNTRUSTED
    tps, speedup, acc = (_number(cell.get(k)) for k in ("tokens_per_second", "speedup", "accuracy"))
    tps, speedup = (f"{tps}{mark}" if tps else DASH), (f"{speedup}×{mark}" if speedup else DASH)
    acc = acc or DASH
    return f"{tps} / {speedup} / {acc}" if layout.cell == "learn2pd" else f"{acc} / {tps} ({speedup})"


def fill(cells: pd.DataFrame, layout: Layout) -> tuple[pd.DataFrame, list[str]]:
    """The layout's table (rows: the sweep's (task, G, B); a dash where its cell was not run) and its notes:
    each column's setting (every knob of the cells shown; the declared one where none ran), ambiguities,
    untrusted timings, what was measured."""
    keys = row_keys(cells)
    rows, notes, flagged = [], [], False
    picked = {c.label: matches(cells, c) for c in layout.columns}
    shown: dict[str, list[str]] = {c.label: [] for c in layout.columns}  # the settings of the cells shown
    for key, _ in cells.groupby(keys, dropna=False, sort=True):
        row = {ROW_KEYS.get(k, k): ("–" if pd.isna(v) else str(int(v)) if isinstance(v, float) else str(v))
               for k, v in zip(keys, key)}
        for c in layout.columns:
            found = picked[c.label]
            found = found[np.logical_and.reduce([found[k].astype(str) == str(v) for k, v in zip(keys, key)])]
            if found.empty:
                row[c.label] = DASH
                continue
            if len(found) > 1:
                notes.append(f"{c.label}, {'/'.join(map(str, key))}: {len(found)} cells match; shown "
                             f"{method_label(found.iloc[0])} ({found.iloc[0].config_hash})")
            row[c.label] = cell_text(found.iloc[0], layout)
            shown[c.label] = list(dict.fromkeys([*shown[c.label], method_label(found.iloc[0])]))
            flagged |= not trusted(found.iloc[:1]).iloc[0]
        rows.append(row)
    table = pd.DataFrame(rows, columns=[ROW_KEYS.get(k, k) for k in keys] + [c.label for c in layout.columns])
    used = pd.concat([p for p in picked.values() if not p.empty]) if any(not p.empty for p in picked.values()) \
        else cells.iloc[:0]
    notes = ["columns: " + "; ".join(f"{c.label} = {' | '.join(shown[c.label]) or c.describe()}"
                                      for c in layout.columns),
             f"cells: {layout.cell_note}; " + caption(used if not used.empty else cells, errors=False)] + notes
    return table, notes + ([UNTRUSTED_NOTE] if flagged else [])


def fits(cells: pd.DataFrame, layout: Layout) -> str | None:
    """None when the sweep ran every strategy the layout compares (with the paper's knobs) and some row has
    cells for two of its columns; else the reason."""
    if cells.empty:
        return "no cells"
    have = [c for c in layout.columns if not matches(cells, c).empty]
    lacking = sorted({c.strategy for c in layout.columns} - {c.strategy for c in have})
    table, _ = fill(cells, layout)
    if not lacking and ((table[[c.label for c in layout.columns]] != DASH).sum(axis=1) >= 2).any():
        return None
    wanted = "; ".join(f"{c.label} = {c.describe()}" for c in layout.columns)
    found = ", ".join(c.label for c in have) or "none"
    return (f"the sweep has cells for {found} of its columns ({wanted})"
            + (f"; no {', '.join(lacking)} cell with the paper's settings" if lacking else "; not two in one row"))


LATEX_SPECIALS = str.maketrans({c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}",
                                 "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"})


def latex_text(text: str) -> str:
    """`text` safe in a LaTeX caption (Styler escapes the cells and headers, not the caption)."""
    return text.translate(LATEX_SPECIALS)


def render(cells: pd.DataFrame, layout: Layout, latex: bool = False) -> str:
    """One table of `layout` with its notes, as markdown or as a LaTeX table (booktabs; escaped)."""
    table, notes = fill(cells, layout)
    if latex:
        styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
        return styler.to_latex(hrules=True, column_format="l" * (table.shape[1] - len(layout.columns))
                               + "c" * len(layout.columns), position_float="centering",
                               caption=latex_text(f"{layout.title} ({layout.cell_note}). " + ". ".join(notes) + "."))
    return (f"### {layout.title} ({layout.cell_note})\n\n" + table.to_markdown(index=False) + "\n\n"
            + "".join(f"- {n}\n" for n in notes))


def render_fitting(cells: pd.DataFrame, layouts, latex: bool = False, log=print) -> list[str]:
    """The layouts that fit the sweep, rendered; each one skipped is reported through `log`."""
    out = []
    for layout in layouts:
        reason = fits(cells, layout)
        if reason:
            log(f"skipped table {layout.title}: {reason}")
        else:
            out.append(render(cells, layout, latex))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--out", type=Path, help="markdown file (default: print)")
    parser.add_argument("--latex", type=Path, help="also write the LaTeX tables here")
    args = parser.parse_args(argv)
    cells = collect_and_report(args.folders).cells
    layouts = [LAYOUTS[name] for name in args.layouts]
    markdown = "\n".join(render_fitting(cells, layouts))
    if args.out:
        args.out.write_text(markdown)
    else:
        print(markdown)
    if args.latex:
        args.latex.write_text("\n".join(render_fitting(cells, layouts, latex=True, log=lambda m: None)))


if __name__ == "__main__":
    main()
