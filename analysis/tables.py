"""Paper tables from stored runs, as markdown and LaTeX (booktabs), best value per row in bold.

    python -m analysis.tables SWEEP_FOLDER [...] --out tables.md [--latex tables.tex]

Layouts: Learn2PD Table 1 (rows task x G: LLaDA | Learn2PD | EoTP | Learn2PD & EoTP; cell tokens/s,
speedup, score), the Learn2PD KV-cache table (Learn2PD & EoTP, + dual, + prefix) and Fast-dLLM Table 1
(LLaDA | +Cache | +Parallel | +Cache+Parallel; cell accuracy / tokens/s (speedup)). A cell that was not run
shows "–", never a made-up value.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .collect import collect_and_report

DASH = "–"


@dataclass(frozen=True)
class Column:
    label: str
    strategy: str
    eotp: bool = False
    cache: str = "none"


@dataclass(frozen=True)
class Layout:
    title: str
    columns: tuple[Column, ...]
    cell: str  # "learn2pd": tokens/s, speedup, score; "fastdllm": accuracy / tokens/s (speedup)


LEARN2PD_TABLE1 = Layout("Learn2PD Table 1", (
    Column("LLaDA", "baseline"), Column("Learn2PD", "learned"), Column("EoTP", "baseline", eotp=True),
    Column("Learn2PD & EoTP", "learned", eotp=True)), "learn2pd")
LEARN2PD_KV = Layout("Learn2PD KV cache", (
    Column("Learn2PD & EoTP", "learned", eotp=True), Column("+ Dual Cache", "learned", True, "dual"),
    Column("+ Prefix Cache", "learned", True, "prefix")), "learn2pd")
FASTDLLM_TABLE1 = Layout("Fast-dLLM Table 1", (
    Column("LLaDA", "baseline"), Column("+Cache", "baseline", cache="prefix"),
    Column("+Parallel", "threshold"), Column("+Cache+Parallel", "threshold", cache="prefix")), "fastdllm")
LAYOUTS = {"learn2pd": LEARN2PD_TABLE1, "learn2pd_kv": LEARN2PD_KV, "fastdllm": FASTDLLM_TABLE1}


def pick(cells: pd.DataFrame, task, gen_length, column: Column) -> pd.Series | None:
    match = cells[(cells.task == task) & (cells.gen_length == gen_length) & (cells.strategy == column.strategy)
                  & (cells.eotp == column.eotp) & (cells.cache == column.cache)]
    return None if match.empty else match.sort_values("tokens_per_second", ascending=False).iloc[0]


def fmt(value, spec: str, bold: bool, latex: bool) -> str:
    if value is None or pd.isna(value):
        return DASH
    text = format(value, spec)
    return (f"\\textbf{{{text}}}" if latex else f"**{text}**") if bold else text


def render(cells: pd.DataFrame, layout: Layout, latex: bool = False) -> str:
    """One table of `layout`; rows are the (task, G) pairs present in `cells`."""
    header = ["Task", "G"] + [c.label for c in layout.columns]
    lines = []
    for (task, gen_length), _ in cells.groupby(["task", "gen_length"]):
        picked = [pick(cells, task, gen_length, c) for c in layout.columns]

        def best(field):
            values = [p[field] for p in picked if p is not None and pd.notna(p[field])]
            return max(values) if values else None
        best_tps, best_speedup, best_acc = best("tokens_per_second"), best("speedup"), best("accuracy")
        row = [str(task), str(int(gen_length))]
        for p in picked:
            if p is None:
                row.append(DASH)
                continue
            tps = fmt(p["tokens_per_second"], ".2f", p["tokens_per_second"] == best_tps, latex)
            speedup = fmt(p["speedup"], ".2f", p["speedup"] == best_speedup, latex)
            acc = fmt(p["accuracy"], ".2f", p["accuracy"] == best_acc, latex)
            x = "$\\times$" if latex else "×"
            row.append(f"{tps} / {speedup}{x} / {acc}" if layout.cell == "learn2pd"
                       else f"{acc} / {tps} ({speedup}{x})")
        lines.append(row)
    if latex:
        body = "\n".join(" & ".join(r) + r" \\" for r in lines)
        return (f"% {layout.title}\n\\begin{{tabular}}{{ll{'c' * len(layout.columns)}}}\n\\toprule\n"
                + " & ".join(header) + " \\\\\n\\midrule\n" + body + "\n\\bottomrule\n\\end{tabular}\n")
    cell_note = ("tokens/s / speedup / score" if layout.cell == "learn2pd" else "accuracy / tokens/s (speedup)")
    out = [f"### {layout.title} ({cell_note})", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in lines]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--out", type=Path, help="markdown file (default: print)")
    parser.add_argument("--latex", type=Path, help="also write the LaTeX tables here")
    args = parser.parse_args(argv)
    got = collect_and_report(args.folders)
    markdown = "\n".join(render(got.cells, LAYOUTS[name]) for name in args.layouts)
    if args.out:
        args.out.write_text(markdown)
    else:
        print(markdown)
    if args.latex:
        args.latex.write_text("\n".join(render(got.cells, LAYOUTS[name], latex=True) for name in args.layouts))


if __name__ == "__main__":
    main()
