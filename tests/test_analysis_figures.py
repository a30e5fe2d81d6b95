"""Analysis figures, the sweep report and the W&B reader/logger, on records written here (no network)."""
import json
from pathlib import Path

import pandas as pd
import pytest

from analysis.collect import collect, main as collect_main
from analysis.figures import (FIGURES, main as figures_main, make_figures, padding_by_task, padding_share,
                              steps_per_block_table)
from analysis.report import report_sweep
from analysis.wandb_io import collect_wandb, log_report
from harness.tracking import summary_of

BLOCK = 8
METHODS = [("baseline", None), ("threshold", 0.5), ("threshold", 0.7), ("threshold", 0.9), ("oracle", None),
           ("learned", None)]


def write_record(folder: Path, name: str, *, task="perm", strategy="baseline", threshold=None, eotp=False,
                 gen_length=32, accuracy=0.8, tpf=1.0, speedup=1.0, samples=None, status="complete",
                 raw_tokens=None, eotp_skipped=0.0, baseline_hash=None) -> dict:
    """One cell folder with result.json (and samples.jsonl when `samples` is given); returns the record."""
    cell = folder / name
    cell.mkdir(parents=True)
    knobs = {"threshold": {"threshold": 0.9 if threshold is None else threshold},
             "learned": {"filter_threshold": 0.96}}.get(strategy, {})
    decoding = {"strategy": strategy, "gen_length": gen_length, "block_length": BLOCK, "eotp": eotp, "cache": "none",
                **knobs}
    nfe = gen_length / max(tpf, 1e-9)
    record = {"status": status, "config_hash": name, "baseline_hash": baseline_hash,
              "method": {"strategy": strategy, "knobs": knobs, "needs_reference": strategy == "oracle"},
              "config": {"model": {"name": "tiny", "path": "tiny"},
                         "task": {"name": task, "limit": 3, "metric": "acc,none"},
                         "decoding": decoding, "sweep": "test", "batch_size": 1},
              "metrics": {"accuracy": accuracy, "accuracy_stderr": 0.02},
              "speed": {"nfe": nfe, "tpf": tpf, "tokens": 5.0,
                        "raw_tokens": 5.0 if raw_tokens is None else raw_tokens,
                        "tokens_per_second": 100 * speedup, "latency_mean": 0.01, "latency_p50": 0.01,
                        "latency_p90": 0.02, "eotp_skipped": eotp_skipped, "samples": 3},
              "speedup": speedup, "nfe_ratio": tpf, "device": "cpu", "dtype": "float32", "batch_size": 1}
    if status == "failed":
        record = {"status": "failed", "error": "CUDA out of memory", "config_hash": name, "config": record["config"]}
    (cell / "result.json").write_text(json.dumps(record))
    if samples is not None:
        (cell / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return record


def make_samples(strategy, eotp, gen_length, n=3, trace=True):
    blocks = gen_length // BLOCK
    out = []
    for i in range(n):
        per_block = BLOCK if strategy == "baseline" else 1 + (i + len(strategy)) % 4
        steps = [per_block] * blocks
        skipped = 0
        if eotp:  # the last block(s) past the EoTP cut were never fed
            cut = max(1, blocks - 1 - i % 2)
            steps[cut:] = [0] * (blocks - cut)
            skipped = (blocks - cut) * BLOCK
        raw = 4 + i
        sample = {"doc_id": i, "target": str(i), "filtered_resps": [str(i)], "acc": float(i % 2),
                  "nfe": sum(steps), "tokens": raw, "raw_tokens": raw, "tpf": raw / sum(steps), "seconds": 0.01,
                  "eotp_skipped": skipped, "gen_length": gen_length, "steps_per_block": steps}
        if trace and strategy != "baseline":
            sample["redecodes"] = [(j + i) % 3 for j in range(gen_length)]
        out.append(sample)
    return out


def write_sweep(root: Path) -> Path:
    """Two tasks x six methods x +-EoTP x two G, with samples (a decoding trace on "perm" only); one failed
    and one incomplete record."""
    k, baselines = 0, {}  # (task, G) -> its plain baseline's name (written first)
    for task in ("perm", "sort"):
        for strategy, tau in METHODS:
            for eotp in (False, True):
                for g in (32, 64):
                    tpf = {"baseline": 1.0, "threshold": 4 - 3 * (tau or 0), "oracle": 3.5, "learned": 2.5}[strategy]
                    tpf *= 1.5 if eotp else 1.0
                    write_record(root, f"{k:03d}", task=task, strategy=strategy, threshold=tau, eotp=eotp,
                                 gen_length=g, baseline_hash=baselines.setdefault((task, g), f"{k:03d}"),
                                 accuracy=0.9 - 0.1 * (tpf / 6) - 0.01 * (g == 64), tpf=tpf,
                                 speedup=tpf * (1.2 if g == 64 else 1.0),
                                 samples=make_samples(strategy, eotp, g, trace=(task == "perm")))
                    k += 1
    write_record(root, "failed", task="perm", strategy="learned", status="failed")
    (root / "incomplete").mkdir()
    (root / "incomplete" / "result.json").write_text('{"status": "complete", "config": {}}')
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("sweep"))


def test_collect_joins_samples_to_cells(sweep):
    got = collect([sweep])
    assert len(got.cells) == 2 * 6 * 2 * 2 and len(got.samples) == 3 * len(got.cells)
    assert set(got.samples.path) == set(got.cells.path)
    assert got.cells.raw_tokens.notna().all()
    assert len(got.problems) == 2


@pytest.fixture(scope="module")
def report(sweep):
    """report_sweep on the sweep, once (PNG only: the vector formats cost time, not code)."""
    return report_sweep(sweep, formats=("png",))


def test_every_figure_is_written(sweep, report, tmp_path):
    written = report["figures"]
    assert set(written) == set(FIGURES)
    assert not [m for m in report["messages"] if "skipped figure" in m]
    assert {p.name for paths in written.values() for p in paths} == {
        f"{stem}.png" for stem in ("speedup_vs_gen_length_perm", "speedup_vs_gen_length_sort", "steps_per_block",
                                   "redecodes", "padding_share", "knob_sweep_perm", "knob_sweep_sort")}
    for paths in written.values():
        for path in paths:  # in the report's own folder
            assert path.parent == sweep / "analysis"
            assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    got = collect([sweep])
    vector = make_figures(got.cells, got.samples, tmp_path / "vec", formats=("pdf", "svg"), only=["redecodes"])
    assert [p.name for p in vector["redecodes"]] == ["redecodes.pdf", "redecodes.svg"]
    assert all(p.stat().st_size > 1000 for p in vector["redecodes"])


def test_steps_per_block_ignores_skipped_blocks(sweep):
    got = collect([sweep])
    table = steps_per_block_table(got.cells, got.samples).set_index(["task", "strategy"])
    assert list(table.loc["perm"].index) == ["baseline", "learned", "threshold", "oracle"]  # the reference
    # first, then by name, the oracle (needs the answer) last
    base = table.loc[("perm", "baseline")]
    assert base["mean"] == base["max"] == BLOCK and base["skipped"] > 0  # EoTP's zeros are not counted


def test_figures_without_data_are_skipped_with_a_message(tmp_path):
    write_record(tmp_path / "s", "a", strategy="baseline", samples=make_samples("baseline", False, 32))
    got = collect([tmp_path / "s"])
    messages = []
    written = make_figures(got.cells, got.samples, tmp_path / "figs", formats=("png",), log=messages.append)
    assert written["redecodes"] == [] and written["knob_sweep"] == [] and written["speedup_vs_gen_length"] == []
    assert any("redecodes" in m and "trace" in m for m in messages)
    assert any("knob_sweep_perm" in m for m in messages)
    assert any("speedup_vs_gen_length_perm: one generation length only (G=32)" in m for m in messages)
    assert written["steps_per_block"] and written["padding_share"]
    empty = make_figures(got.cells.iloc[:0], pd.DataFrame(), tmp_path / "none", formats=("png",),
                         log=messages.append)
    assert all(paths == [] for paths in empty.values())


def test_padding_share_by_hand(tmp_path):
    G = 32
    write_record(tmp_path, "plain", gen_length=G, samples=[
        {"doc_id": 0, "gen_length": G, "raw_tokens": 10, "eotp_skipped": 0, "steps_per_block": [8] * 4},
        {"doc_id": 1, "gen_length": G, "raw_tokens": 30, "eotp_skipped": 8, "steps_per_block": [8, 8, 8, 0]}])
    write_record(tmp_path, "eotp", gen_length=G, eotp=True, samples=[
        {"doc_id": 0, "gen_length": G, "raw_tokens": 10, "eotp_skipped": 16, "steps_per_block": [8, 8, 0, 0]}])
    write_record(tmp_path, "nosamples", strategy="oracle", gen_length=G, raw_tokens=12, eotp_skipped=4)
    got = collect([tmp_path])
    table = padding_share(got.cells, got.samples).set_index("config_hash")
    # (G - eotp_skipped - raw_tokens) / G per sample, clipped at 0, averaged over the cell's samples
    assert table.loc["plain", "padding_share"] == pytest.approx((22 / 32 + 0) / 2)
    assert table.loc["eotp", "padding_share"] == pytest.approx(6 / 32)
    assert table.loc["nosamples", "padding_share"] == pytest.approx(16 / 32)
    assert table.loc["nosamples", "source"] == "cell means" and table.loc["plain", "samples"] == 2
    assert table.loc["eotp", "base_method"] == "baseline" and table.loc["eotp", "method"] == "baseline +EoTP"
    # one value per task: the cells without EoTP (an EoTP cut lowers its own)
    assert padding_by_task(got.cells, got.samples).to_dict("records") == [
        {"task": "perm", "G": 32, "padding_share": pytest.approx((11 / 32 + 16 / 32) / 2), "cells": 2}]


def test_report_sweep(sweep, report):
    written = report
    assert written["pool"] == ["baseline", "learned", "threshold"] and len(written["problems"]) == 2  # no oracle
    out = sweep / "analysis"  # the default: beside the cells, not among them
    for task in ("perm", "sort"):
        assert (out / f"pareto_{task}.png").stat().st_size > 1000
        assert {out / f"pareto_{task}.png", out / f"pareto_{task}_tpf.png"} <= set(written["pareto"])
        assert not (out / f"pareto_{task}.svg").exists()  # only the formats asked for
    md = (out / "tables.md").read_text()
    assert written["tables_md"] == out / "tables.md" and not list(sweep.glob("*.png"))
    assert "## Skipped records" in md and "failed (CUDA out of memory)" in md and "incomplete record" in md
    assert "comparison pool: baseline, learned, threshold" in md
    assert "## Pareto frontier" in md and "### perm" in md and "### sort" in md
    assert "## Accuracy % / mean NFE per method and task" in md
    # the sweep's learned filter runs at the paper's tau_f: Learn2PD Table 1 fits; nothing ran a prefix cache
    assert "### Learn2PD Table 1" in md and "### Fast-dLLM Table 1" in md
    assert "skipped table Learn2PD Table 2 (KV cache)" in md
    assert "| perm | baseline | 64 | 8 | 8.00 |" in md  # 64 blocks at 8 forwards; the 8 skipped ones apart
    assert all(p.exists() for p in written["paths"])
    assert set(written["tables"]) >= {"frontier_speedup", "frontier_tpf", "aup"}


def test_report_on_a_single_task_and_strategy(tmp_path, capsys):
    for i, g in enumerate((32, 64)):
        write_record(tmp_path, f"c{i}", strategy="baseline", gen_length=g)  # no samples at all
    write_record(tmp_path, "bad", status="failed")
    written = report_sweep(tmp_path, formats=("png",), pool=["baseline"])
    out = capsys.readouterr().out
    assert "skipped: " in out and "comparison pool: baseline" in out
    md = written["tables_md"].read_text()
    assert (tmp_path / "analysis" / "pareto_perm.png").exists()
    assert "comparison pool: baseline" in md and "failed (CUDA out of memory)" in md
    assert written["figures"]["redecodes"] == [] and "skipped figure redecodes" in md


def test_figures_cli(sweep, tmp_path, capsys):
    with pytest.raises(SystemExit):
        figures_main(["--help"])
    assert "--out" in capsys.readouterr().out
    figures_main([str(sweep), "--out", str(tmp_path / "cli"), "--formats", "png", "--only", "knob_sweep"])
    assert (tmp_path / "cli" / "knob_sweep_perm.png").exists()


# ---------------------------------------------------------------- W&B
class FakeRun:
    def __init__(self, record, state="finished", run_id="r"):
        self.config, self.state, self.id, self.name = record.get("config", {}), state, run_id, f"run-{run_id}"
        # what the sweep's W&B logging puts in a run's summary
        self.summary = {**{k: v for k, v in summary_of(record).items() if v is not None}, "_runtime": 3.0}


class FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None, **kwargs):
        self.calls.append((path, filters))
        return list(self._runs)


def test_collect_wandb_matches_collect(tmp_path):
    records = [write_record(tmp_path, f"w{i}", task=task, strategy=strategy, threshold=tau, eotp=eotp,
                            accuracy=0.5 + 0.1 * i, tpf=1 + i, speedup=1 + i)
               for i, (task, strategy, tau, eotp) in enumerate([("perm", "baseline", None, False),
                                                                ("perm", "threshold", 0.7, True),
                                                                ("sort", "learned", None, False)])]
    local = collect([tmp_path])
    report = FakeRun({}, run_id="report")
    report.job_type = "analysis"  # a log_report run in the same group: not a cell, not a problem
    api = FakeApi([FakeRun(r, run_id=str(i)) for i, r in enumerate(records)]
                  + [FakeRun(records[0], state="crashed", run_id="x"), report])
    remote = collect_wandb("me/dllm", group="quickstart", api=api)
    assert api.calls == [("me/dllm", {"group": "quickstart"})]
    columns = [c for c in local.cells.columns if c != "path"]
    pd.testing.assert_frame_equal(local.cells[columns].sort_values("config_hash").reset_index(drop=True),
                                  remote.cells[columns].sort_values("config_hash").reset_index(drop=True))
    assert len(remote.problems) == 1 and "crashed" in remote.problems[0] and "run-x" in remote.problems[0]
    assert remote.cells.path.str.startswith("wandb:me/dllm/").all()


def test_collect_cli_with_wandb(tmp_path, monkeypatch, capsys):
    record = write_record(tmp_path, "w", strategy="oracle")
    import analysis.wandb_io as wandb_io
    monkeypatch.setattr(wandb_io, "_api", lambda: FakeApi([FakeRun(record), FakeRun(record, "running", "y")]))
    collect_main(["--wandb", "me/dllm", "--group", "g", "--out", str(tmp_path / "cells.csv")])
    out = capsys.readouterr().out
    assert "1 cells" in out and "skipped: " in out and "running" in out
    assert pd.read_csv(tmp_path / "cells.csv").strategy.tolist() == ["oracle"]


def test_log_report(sweep, tmp_path, monkeypatch):
    import wandb
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    got = collect([sweep])
    from analysis.pareto import frontier_table
    figure = make_figures(got.cells, got.samples, tmp_path / "figs", formats=("png",), only=["knob_sweep"],
                          log=lambda m: None)["knob_sweep"]
    tables = {"frontier_speedup": frontier_table(got.cells)}
    try:
        assert log_report(figure, tables, project="dllm-test", group="g", mode="disabled") is None
        run_dir = log_report(figure, tables, project="dllm-test", group="g", mode="offline", dir=tmp_path)
    finally:
        wandb.finish()
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and run_dir is not None and Path(run_dir) == offline[0]
    assert any(offline[0].glob("*.wandb"))
    assert any(offline[0].rglob("knob_sweep_perm*.png")) and any(offline[0].rglob("frontier_speedup*.table.json"))
    # a failure inside wandb is a warning, never an exception
    with pytest.warns(UserWarning, match="wandb"):
        assert log_report(figure, tables, project="dllm-test", mode="no-such-mode") is None
