"""Paper tables, figures and the sweep report on a hand-built cells table with several knobs per strategy
(the columns of `analysis.collect`), drawn with real matplotlib."""
import re

import numpy as np
import pandas as pd
import pytest

from analysis.aup import aup_table, default_pool
from analysis.figures import (make_figures, new_figure, padding_by_task, plot_knob_sweep,
                              plot_speedup_vs_gen_length)
from analysis.pareto import axis_for, draw, frontier_table, plot_task
from analysis.report import method_task_table
from analysis.style import UNTRUSTED, UNTRUSTED_NOTE, caption, colours_for, strategy_colours
from analysis.tables import FASTDLLM_TABLE1, LAYOUTS, LEARN2PD_KV, LEARN2PD_TABLE1, fill, render, render_fitting


def cell(task, strategy, knobs=None, *, eotp=False, cache="none", accuracy=80.0, tpf=1.0, speedup=1.0, G=32,
         trusted=True, needs_reference=False, is_reference=False):
    knobs = dict(knobs or {})
    name = f"{task}-{strategy}-{sorted(knobs.items())}-{eotp}-{cache}-{G}"
    return {"model": "tiny", "task": task, "strategy": strategy, "knobs": knobs, **knobs, "eotp": eotp,
            "cache": cache, "gen_length": G, "block_length": 8, "accuracy": accuracy, "accuracy_stderr": 2.0,
            "nfe": G / tpf, "tpf": tpf, "tokens_per_second": 10 * speedup, "speedup": speedup,
            "speedup_q1": 0.9 * speedup, "speedup_q3": 1.1 * speedup, "nfe_ratio": tpf, "timing_trusted": trusted,
            "device": "cpu", "device_name": "2-core CPU", "batch_size": 50, "samples": 100,
            "raw_tokens": 6.0, "eotp_skipped": 20.0 if eotp else 0.0, "config_hash": name,
            "baseline_hash": f"{task}-baseline-[]-False-none-{G}", "path": name,
            "needs_reference": needs_reference, "is_reference": is_reference}


def sweep_cells(tasks=("code", "perm"), gen_lengths=(32,)) -> pd.DataFrame:
    rows = []
    for task in tasks:
        for G in gen_lengths:
            rows += [cell(task, "baseline", G=G, is_reference=True),
                     cell(task, "baseline", eotp=True, tpf=3, speedup=2.5, G=G),
                     cell(task, "baseline", cache="prefix", speedup=1.8, accuracy=79, G=G),
                     cell(task, "oracle", accuracy=80, tpf=7, speedup=6, G=G, needs_reference=True)]
            for tau, acc, tpf in ((0.5, 31, 6.5), (0.7, 70, 5), (0.9, 79, 4)):
                for cache in ("none", "prefix"):
                    rows.append(cell(task, "threshold", {"threshold": tau}, cache=cache, accuracy=acc, tpf=tpf,
                                     speedup=tpf * (1.5 if cache == "prefix" else 1), G=G))
            for k, acc in ((2, 60), (4, 15)):
                rows.append(cell(task, "topk", {"k": k}, accuracy=acc, tpf=k, speedup=k, G=G))
            for tau_f, acc, tpf in ((0.8, 79, 5.5), (0.96, 80, 4.5)):
                for eotp in (False, True):
                    rows.append(cell(task, "learned", {"filter_threshold": tau_f, "outranked_threshold": None},
                                     eotp=eotp, accuracy=acc, tpf=tpf * (2 if eotp else 1),
                                     speedup=tpf * (2 if eotp else 1), G=G))
            rows.append(cell(task, "learned", {"filter_threshold": 0.96, "outranked_threshold": 0.99}, eotp=True,
                             accuracy=81, tpf=8, speedup=8, G=G))  # a variant: not the paper's Learn2PD
            for cache in ("dual", "prefix"):
                rows.append(cell(task, "learned", {"filter_threshold": 0.96, "outranked_threshold": None}, eotp=True,
                                 cache=cache, accuracy=77, tpf=9, speedup=20, G=G))
    return pd.DataFrame(rows)


@pytest.fixture
def cells():
    return sweep_cells()


# ---------------------------------------------------------------- paper tables
def test_fastdllm_columns_hold_the_papers_settings_not_the_fastest_cell(cells):
    table, notes = fill(cells, FASTDLLM_TABLE1)
    code = table.set_index("Task").loc["code"]
    assert code["+Parallel"] == "79.00 / 40.00 (4.00×)"  # tau 0.9, although tau 0.5 ran 6.5x faster
    assert code["+Cache+Parallel"] == "79.00 / 60.00 (6.00×)"
    assert code["LLaDA"] == "80.00 / 10.00 (1.00×)" and code["+Cache"] == "79.00 / 18.00 (1.80×)"
    assert any("+Parallel = threshold τ=0.9" in n and "+Cache = baseline +prefix" in n for n in notes)
    assert any("tiny" in n and "G=32" in n and "B=8" in n and "2-core CPU" in n for n in notes)


def test_learn2pd_columns_take_tau_f_096_and_no_variant(cells):
    table, notes = fill(cells, LEARN2PD_TABLE1)
    perm = table.set_index("Task").loc["perm"]
    assert perm["Learn2PD"] == "45.00 / 4.50× / 80.00"  # tau_f 0.96, not the faster 0.8
    assert perm["Learn2PD & EoTP"] == "90.00 / 9.00× / 80.00"  # not the outranked variant (8x, 81 %)
    assert perm["EoTP"] == "25.00 / 2.50× / 80.00"
    kv = fill(cells, LEARN2PD_KV)[0].set_index("Task").loc["perm"]
    assert kv["+ Dual Cache"] == kv["+ Prefix Cache"] == "200.00 / 20.00× / 77.00"
    assert any("Learn2PD = learned τ_f=0.96" in n for n in notes)


def test_every_latex_row_has_the_tables_column_count(cells):
    for layout in LAYOUTS.values():
        latex = render(cells, layout, latex=True)
        columns = re.search(r"\\begin\{tabular\}\{(\w+)\}", latex).group(1)
        assert len(columns) == 3 + len(layout.columns)
        body = latex.split("\\toprule\n")[1].split("\\bottomrule")[0].replace("\\midrule\n", "")
        rows = [r for r in body.split("\\\\\n") if r.strip()]
        assert len(rows) == 1 + 2  # header and two tasks
        for row in rows:
            assert len(re.split(r"(?<!\\)&", row)) == len(columns), row
    latex = render(cells, LEARN2PD_TABLE1, latex=True)
    assert "Learn2PD \\& EoTP" in latex  # escaped by Styler, header and caption alike
    assert "\\caption{Learn2PD Table 1" in latex and "Learn2PD \\& EoTP = learned τ\\_f=0.96" in latex


def test_a_layout_without_its_cells_is_skipped_with_a_message(cells):
    no_learned = cells[cells.strategy != "learned"]
    messages = []
    rendered = render_fitting(no_learned, LAYOUTS.values(), log=messages.append)
    assert len(rendered) == 1 and rendered[0].startswith("### Fast-dLLM Table 1")
    assert [m.split(":")[0] for m in messages] == ["skipped table Learn2PD Table 1",
                                                  "skipped table Learn2PD Table 2 (KV cache)"]
    assert "LLaDA, EoTP" in messages[0]  # the columns it did find
    assert all("–" not in r.split("\n\n")[1].replace("| –", "") for r in rendered)


def test_untrusted_timings_are_marked_in_tables(cells):
    cells.loc[(cells.strategy == "threshold") & (cells.task == "code"), "timing_trusted"] = False
    table, notes = fill(cells, FASTDLLM_TABLE1)
    code, perm = table.set_index("Task").loc["code"], table.set_index("Task").loc["perm"]
    assert code["+Parallel"] == f"79.00 / 40.00{UNTRUSTED} (4.00×{UNTRUSTED})" and UNTRUSTED not in perm["+Parallel"]
    assert notes[-1] == UNTRUSTED_NOTE
    assert UNTRUSTED not in "".join(fill(cells[cells.task == "perm"], FASTDLLM_TABLE1)[1])


# ---------------------------------------------------------------- figures
def test_one_colour_per_strategy_stable_and_distinct(cells):
    colours = colours_for(cells)
    assert len(set(colours.values())) == len(colours) == 5
    assert colours["oracle"] == "0.5"  # needs the answer: the reference grey
    again = strategy_colours(["learned", "a_strategy_nobody_registered", "baseline", "threshold", "topk"])
    assert all(again[s] == colours[s] for s in ("learned", "baseline", "threshold"))  # across sweeps
    assert len(set(again.values())) == 5  # an unknown name takes a free slot
    assert strategy_colours(["baseline"])["baseline"] == colours["baseline"]


def test_pareto_draws_knob_sweeps_as_curves_the_oracle_as_reference_and_a_staircase(cells):
    fig, axes = new_figure()
    ax = axes[0, 0]
    code = cells[cells.task == "code"]
    draw(ax, code, "speedup", colours_for(cells))
    labels = [line.get_label() for line in ax.lines]
    assert "threshold +prefix (τ swept)" in labels and "topk (k swept)" in labels
    assert any(label.startswith("learned τ_o") or "τ_f swept" in label for label in labels)
    assert any("oracle" in label and "reference" in label for label in labels)
    curves = [list(line.get_xdata()) for line in ax.lines]
    assert [6.5, 5, 4] in curves and [2, 4] in curves  # tau 0.5 / 0.7 / 0.9 and k 2 / 4 joined, in knob order
    assert {"0.5", "0.7", "0.9", "2", "4"} <= {t.get_text() for t in ax.texts}  # knob values marked
    stairs = next(line for line in ax.lines if line.get_label() == "Pareto frontier (oracle excluded)")
    assert stairs.get_drawstyle() == "steps-pre"
    front = frontier_table(cells, "speedup")
    assert not front.method.str.startswith("oracle").any()
    star = [c for c in ax.collections if c.get_label().startswith("reference: baseline")]
    assert len(star) == 1 and list(star[0].get_offsets()[0]) == [1.0, 80.0]


def test_untrusted_cells_are_hollow_and_fall_back_to_tokens_per_forward(cells, tmp_path):
    cells.loc[(cells.strategy == "topk") & (cells.task == "code"), "timing_trusted"] = False
    code = cells[cells.task == "code"]
    assert axis_for(code, "speedup") == ("speedup", "")  # two flagged cells of 19: drawn hollow
    perm = cells[cells.task == "perm"].assign(timing_trusted=lambda c: c.strategy != "baseline")
    assert axis_for(perm, "speedup") == ("speedup", "")
    assert axis_for(perm.assign(timing_trusted=False), "speedup") == (
        "tpf", "timings flagged on 19 of 19 cells: x is tokens per forward instead of speedup")
    fig, axes = new_figure()
    draw(axes[0, 0], code, "speedup", colours_for(cells))
    hollow = [c for c in axes[0, 0].collections if len(c.get_offsets()) and len(c.get_facecolors()) == 0]
    assert sum(len(c.get_offsets()) for c in hollow) >= 2  # the two topk cells (and the oracle's)
    assert any(line.get_label().startswith("hollow: timing flagged") for line in axes[0, 0].lines)
    paths = plot_task(cells, "code", "speedup", tmp_path, formats=("png",))
    assert [p.name for p in paths] == ["pareto_code.png"] and paths[0].stat().st_size > 10_000


def test_speedup_vs_gen_length_needs_two_lengths(cells, tmp_path):
    messages = []
    assert plot_speedup_vs_gen_length(cells, tmp_path, ("png",), messages.append) == []
    assert messages == ["skipped figure speedup_vs_gen_length_code: one generation length only (G=32): no x axis "
                        "to draw", "skipped figure speedup_vs_gen_length_perm: one generation length only (G=32): "
                        "no x axis to draw"]
    two = sweep_cells(tasks=("perm",), gen_lengths=(32, 64))
    assert [p.name for p in plot_speedup_vs_gen_length(two, tmp_path, ("png",))] == ["speedup_vs_gen_length_perm.png"]


def test_knob_sweep_has_a_row_per_swept_knob(cells, tmp_path):
    paths = plot_knob_sweep(cells, tmp_path, ("png",))
    assert [p.name for p in paths] == ["knob_sweep_code.png", "knob_sweep_perm.png"]
    messages = []
    assert plot_knob_sweep(cells[cells.strategy == "baseline"], tmp_path, ("png",), messages.append) == []
    assert len(messages) == 2 and "no method family sweeps a knob" in messages[0]


def test_padding_share_is_one_value_per_task(cells):
    table = padding_by_task(cells.assign(raw_tokens=np.where(cells.task == "code", 8.0, 4.0)), None)
    assert list(table.task) == ["code", "perm"] and list(table.G) == [32, 32]
    assert list(table.padding_share) == pytest.approx([24 / 32, 28 / 32])


def test_every_figure_on_a_sweep_with_several_knobs(tmp_path):
    cells = sweep_cells(gen_lengths=(32, 64))
    messages = []
    written = make_figures(cells, None, tmp_path, ("png",), log=messages.append)
    assert {p.name for ps in written.values() for p in ps} == {
        "speedup_vs_gen_length_code.png", "speedup_vs_gen_length_perm.png", "padding_share.png",
        "knob_sweep_code.png", "knob_sweep_perm.png"}
    assert sorted(m.split(":")[0] for m in messages) == ["skipped figure redecodes", "skipped figure steps_per_block"]


def test_caption_says_what_was_measured(cells):
    assert caption(cells) == ("tiny, N=100 problems, G=32, B=8, 2-core CPU; error bars: ± 1 stderr of accuracy; "
                              "speedup: median and IQR of paired rounds")
    assert caption(cells, errors=False) == "tiny, N=100 problems, G=32, B=8, 2-core CPU"


# ---------------------------------------------------------------- report tables, AUP
def test_method_task_table_is_the_readme_layout(cells):
    table = method_task_table(cells).set_index("method")
    assert list(table.columns) == ["code", "perm"]
    assert table.index[0] == "baseline" and table.index[-1] == "oracle"
    assert table.loc["baseline", "code"] == "80.0 / 32"
    assert table.loc["threshold τ=0.5", "perm"] == "31.0 / 4.92"
    assert table.loc["baseline +EoTP", "perm"] == "80.0 / 10.67"


def test_aup_pool_leaves_the_oracle_out_by_default(cells):
    assert default_pool(cells) == ["baseline", "learned", "threshold", "topk"]
    assert "oracle" not in set(aup_table(cells).method)
    assert "oracle" in set(aup_table(cells, ["oracle", "baseline"]).method)
