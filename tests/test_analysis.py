"""Analysis: collect, Pareto frontier, AUP, paper tables and plots, on records written here."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.aup import aup, aup_board, aup_table
from analysis.collect import collect, knob_names, method_label
from analysis.pareto import frontier_table, pareto_mask, plot_task
from analysis.tables import FASTDLLM_TABLE1, LEARN2PD_TABLE1, fill, render


def write_cell(folder, name, strategy, accuracy, tps, speedup, tpf, eotp=False, cache="none", threshold=0.9,
               task="perm", gen_length=32, status="complete", samples=2):
    cell = folder / name
    cell.mkdir(parents=True)
    record = {"status": status, "config_hash": name,
              "config": {"model": {"name": "tiny"}, "task": {"name": task},
                         "decoding": {"strategy": strategy, "threshold": threshold, "filter_threshold": 0.96,
                                      "eotp": eotp, "cache": cache, "gen_length": gen_length, "block_length": 8}},
              "metrics": {"accuracy": accuracy / 100, "accuracy_stderr": 0.02},
              "speed": {"nfe": 32 / tpf, "tpf": tpf, "tokens_per_second": tps, "latency_p50": 0.1,
                        "latency_p90": 0.2, "eotp_skipped": 0},
              "speedup": speedup, "nfe_ratio": tpf, "device": "cpu", "batch_size": 1}
    if status == "failed":
        record = {"status": "failed", "error": "CUDA out of memory", "config_hash": name}
    (cell / "result.json").write_text(json.dumps(record))
    (cell / "samples.jsonl").write_text("".join(json.dumps({"doc_id": i, "nfe": 4}) + "\n" for i in range(samples)))


@pytest.fixture
def sweep(tmp_path):
    write_cell(tmp_path, "0", "baseline", 80, 10, 1.0, 1.0)
    write_cell(tmp_path, "1", "threshold", 78, 30, 3.0, 3.0)
    write_cell(tmp_path, "2", "threshold", 75, 50, 5.0, 5.0, threshold=0.5)
    write_cell(tmp_path, "3", "learned", 79, 40, 4.0, 4.0)
    write_cell(tmp_path, "4", "learned", 79, 80, 8.0, 6.0, eotp=True)
    write_cell(tmp_path, "5", "baseline", 80, 20, 2.0, 1.0, eotp=True)
    write_cell(tmp_path, "6", "baseline", 0, 0, 0, 1.0, status="failed")
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "result.json").write_text('{"status": "complete", "config": {}}')
    return tmp_path


def test_collect_reports_failed_and_incomplete_records(sweep):
    got = collect([sweep])
    assert len(got.cells) == 6 and len(got.samples) == 12
    assert any("failed (CUDA out of memory)" in p for p in got.problems)
    assert any("incomplete record" in p for p in got.problems)
    row = got.cells.set_index("config_hash").loc["3"]
    assert row.accuracy == pytest.approx(79) and math.isnan(row.threshold) and row.filter_threshold == 0.96


def test_method_label_names_each_knob_of_its_strategy_by_its_declared_symbol():
    learned = {"strategy": "learned", "knobs": {"filter_path": "/x/filters/perm.safetensors", "filter_threshold": 0.75,
                                                "outranked_threshold": 0.96}, "eotp": True, "cache": "dual"}
    assert method_label(learned) == "learned filter=perm.safetensors τ_f=0.75 τ_o=0.96 +EoTP +dual"
    learned["knobs"]["outranked_threshold"] = None
    assert method_label(learned) == "learned filter=perm.safetensors τ_f=0.75 +EoTP +dual"
    assert method_label({"strategy": "topk", "knobs": {"k": 3}, "eotp": False, "cache": "none"}) == "topk k=3"
    # a mode at its declared default says nothing; away from it, it is named
    plain = {"strategy": "baseline", "knobs": {"steps": None, "remasking": "low_confidence"}, "eotp": False}
    assert method_label(plain) == "baseline"
    plain["knobs"] |= {"steps": 8, "remasking": "random"}
    assert method_label(plain) == "baseline steps=8 remasking=random"
    # a minor knob declared `secondary` is named only away from its authors' default
    credit = {"strategy": "credit", "knobs": {"threshold": 0.9, "credit_alpha": 0.7, "decay_beta": 0.8}, "eotp": False}
    assert method_label(credit) == "credit τ=0.9"
    credit["knobs"]["credit_alpha"] = 0.5
    assert method_label(credit) == "credit τ=0.9 α=0.5"
    # a record's own label wins (the harness wrote it from the policy's declaration)
    assert method_label({**plain, "label": "baseline (as recorded)"}) == "baseline (as recorded)"


def test_pareto_on_random_points():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = rng.integers(0, 6, 30).astype(float), rng.integers(0, 6, 30).astype(float)
        keep = pareto_mask(x, y)
        for i in range(30):
            dominated = np.any((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i])))
            assert keep[i] == (not dominated)


def test_frontier_table_and_plots(sweep, tmp_path):
    got = collect([sweep])
    front = frontier_table(got.cells)
    assert list(front.method) == ["learned τ_f=0.96 +EoTP", "baseline +EoTP"]  # baseline: dominated
    paths = plot_task(got.cells, "perm", "speedup", tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_aup_by_hand():
    w78 = math.exp(-3 * (1 - 78 / 80))
    expected = 1 * 80 + (2 - 1) * (78 * w78 + 80) / 2
    assert aup([(2, 78), (1, 80), (3, 70)], y_max=80) == pytest.approx(expected)  # (3, 70) is > 5 below: dropped
    assert aup([(1, 80)], y_max=80) == 80
    # the same points score lower against a stronger pool
    w = lambda y: math.exp(-3 * (1 - y / 90))  # noqa: E731
    assert aup([(1, 80), (2, 78)], y_max=90) == pytest.approx(80 + (78 * w(78) + 80 * w(80)) / 2)


def test_aup_board_ranks_per_task_and_overall():
    table = pd.DataFrame([("arith", "x", 80.0), ("arith", "y", 160.0), ("perm", "x", 5.0), ("perm", "y", 3.0),
                          ("arith", "z", 100.0)], columns=["task", "method", "aup"])
    board = aup_board(table).set_index("method")
    # relative to each task's best: y = (1 + 0.6) / 2, x = (0.5 + 1) / 2, z = 100 / 160 on its one task
    assert board["overall"].to_dict() == pytest.approx({"y": 0.8, "x": 0.75, "z": 0.625})
    assert board["rank"].tolist() == [1, 2, 3]
    assert board.loc["x", "perm"] == "5.00 (1)" and board.loc["x", "arith"] == "80.00 (3)"
    assert board.loc["z", "tasks"] == 1 and board.loc["z", "perm"] == ""


def test_aup_depends_on_the_declared_pool(sweep):
    cells = collect([sweep]).cells
    cells.loc[cells.config_hash == "3", "accuracy"] = 95.0
    alone = aup_table(cells, pool=["baseline", "threshold"]).set_index("method")
    pooled = aup_table(cells).set_index("method")
    assert alone.loc["threshold", "y_max"] == 80 and pooled.loc["threshold", "y_max"] == 95
    assert pooled.loc["threshold", "aup"] < alone.loc["threshold", "aup"]


def test_tables_from_records_show_dashes_for_cells_not_run(sweep):
    cells = collect([sweep]).cells
    learn2pd = fill(cells, LEARN2PD_TABLE1)[0].iloc[0].to_dict()
    assert learn2pd == {"Task": "perm", "G": "32", "B": "8", "LLaDA": "10.00 / 1.00× / 80.00",
                        "Learn2PD": "40.00 / 4.00× / 79.00", "EoTP": "20.00 / 2.00× / 80.00",
                        "Learn2PD & EoTP": "80.00 / 8.00× / 79.00"}
    fast = fill(cells, FASTDLLM_TABLE1)[0].iloc[0]  # no prefix-cache runs; +Parallel is tau 0.9, not 0.5
    assert list(fast[3:]) == ["80.00 / 10.00 (1.00×)", "–", "78.00 / 30.00 (3.00×)", "–"]
    latex = render(cells, LEARN2PD_TABLE1, latex=True)
    assert "\\toprule" in latex and "Learn2PD \\& EoTP" in latex


def test_cells_carry_own_knobs_and_reference_flags(tmp_path):
    """Knob columns come from each record's `method` (or, for older records, its strategy's registered knobs);
    the baseline is the reference cell; the oracle needs the reference answer."""
    write_cell(tmp_path, "b", "baseline", 80, 10, 1.0, 1.0)
    write_cell(tmp_path, "o", "oracle", 99, 10, 3.0, 3.0)  # no `method`: an older record
    write_cell(tmp_path, "k", "topk", 70, 20, 2.0, 3.0)
    for name, extra in (("b", {"baseline_hash": "b", "timing": {"trusted": True}}),
                        ("k", {"baseline_hash": "b", "method": {"strategy": "topk", "knobs": {"k": 3},
                                                                 "needs_reference": False}})):
        path = tmp_path / name / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra, "device_name": "cpu"}))
    cells = collect([tmp_path]).cells.set_index("config_hash")
    assert knob_names(cells) == ["k"]  # the stray threshold of the old records is no knob of theirs
    assert cells.loc["b", "knobs"] == {} and cells.loc["o", "knobs"] == {}
    assert cells.loc["k", "knobs"] == {"k": 3} and cells.loc["k", "k"] == 3 and math.isnan(cells.loc["b", "k"])
    assert list(cells.needs_reference) == [False, False, True]  # b, k, o
    assert list(cells.is_reference) == [True, False, False]
    assert cells.loc["b", "timing_trusted"] is True and cells.loc["k", "device_name"] == "cpu"
    assert method_label(cells.loc["k"]) == "topk k=3"
