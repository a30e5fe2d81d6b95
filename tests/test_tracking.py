"""W&B tells the truth, read back from the offline run files with W&B's own reader (`wandb leet inspect`): a
cell's run is open while the cell runs (its console is in the run), is named by what it measures, holds the
samples with their text and speed, ends failed with the error when the cell fails; a skipped cell opens no
run; W&B failures never cost a cell; online without a network falls back to offline once per sweep; the
report's analysis run is one per sweep however often the report runs."""
import json
import logging
import socket
import subprocess
from pathlib import Path

import pytest

from analysis.report import main as report_main
from analysis.wandb_io import analysis_run_id
from harness import tracking
from harness.run import run_cell

from .test_sweep import harness_cli, settings_for

SAMPLE_COLUMNS = ["doc_id", "prompt", "output", "target", "acc", "nfe", "tpf", "latency_s", "tokens", "raw_tokens",
                  "eotp_skipped", "remasked"]


def inspect(run_dir: Path, summary: bool = True):
    """The run as W&B reads it back: its state, summary, config and console (`summary`), or its records."""
    shown = subprocess.run(["wandb", "leet", "inspect", *(["--summary"] if summary else []), "--json", str(run_dir)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout) if summary else [json.loads(line) for line in shown.stdout.splitlines()]


def offline_runs(folder: Path) -> list[Path]:
    return sorted(folder.glob("wandb/offline-run-*"))


@pytest.fixture(scope="module")
def complete_cell(tmp_path_factory) -> tuple[Path, dict]:
    """One threshold cell with EoTP and the dual cache, run by the app (W&B offline); its folder and record."""
    store = tmp_path_factory.mktemp("store")
    run = harness_cli("task=arith", "decoding=threshold", "decoding.eotp=true", "decoding.cache=dual",
                      "task.limit=4", "batch_size=4", "warmup=0", "pair_rounds=1", "tracking=wandb_offline",
                      store=store)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output[-3000:]
    (record_file,) = [p for p in store.rglob("result.json") if "baselines" not in p.parts]
    return record_file.parent, json.loads(record_file.read_text())


def test_a_complete_cell_run_spans_the_cell_and_is_named_by_what_it_measures(complete_cell):
    folder, record = complete_cell
    (run_dir,) = offline_runs(folder)
    run = inspect(run_dir)
    assert (run["state"], run["exit_code"]) == ("finished", 0)
    assert run["name"] == f"arith · threshold τ=0.9 · eotp · dual · {record['config_hash'][:6]}"
    assert run["config"]["decoding"] == record["config"]["decoding"] and run["config"]["sweep"] == "default"
    assert run["summary"]["status"] == "complete" and run["summary"]["config_hash"] == record["config_hash"]
    assert run["summary"]["accuracy"] == pytest.approx(record["metrics"]["accuracy"])
    # opened at the cell's start: the evaluation's progress and the baseline it ran first are in its console
    console = "\n".join(line["line"] for line in run["console"])
    assert "dllm generate" in console and f"running the baseline {record['baseline_hash']}" in console
    assert any(r["type"] == "stats" for r in inspect(run_dir, summary=False))  # system metrics
    assert not offline_runs(folder.parent / "baselines" / record["baseline_hash"])  # part of the cell's run


def test_the_samples_table_holds_each_problems_text_correctness_and_speed(complete_cell):
    folder, _ = complete_cell
    (table_file,) = offline_runs(folder)[0].glob("files/media/table/samples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == SAMPLE_COLUMNS
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(table["data"]) == len(samples) == 4
    for row, sample in zip(table["data"], samples):
        got = dict(zip(SAMPLE_COLUMNS, row))
        assert got["prompt"] == sample["arguments"][0][0] and got["prompt"].startswith("math :")
        assert got["output"] == sample["resps"][0][0] and got["target"] == sample["target"]
        assert (got["acc"], got["nfe"], got["tpf"], got["latency_s"]) == (
            sample["acc"], sample["nfe"], sample["tpf"], sample["seconds"])


def test_the_table_keeps_the_rows_of_the_metrics_filter():
    """lm-eval logs a GSM8K problem once per filter; the Table shows the one the cell's metric reads."""
    logged = [{"doc_id": 0, "filter": f, "arguments": [["Q: 2+2?", {}]], "resps": [["so 4. #### 4"]],
               "filtered_resps": [answer], "target": "4", "exact_match": score, "nfe": 8, "seconds": 0.5}
              for f, answer, score in (("strict-match", "4", 1.0), ("flexible-extract", "[invalid]", 0.0))]
    (row,) = tracking.sample_rows(logged, "exact_match,strict-match")
    assert (row["prompt"], row["output"], row["exact_match"], row["latency_s"]) == ("Q: 2+2?", "so 4. #### 4", 1.0, 0.5)


def test_a_skipped_cell_opens_no_run(complete_cell):
    folder, _ = complete_cell
    run = harness_cli("task=arith", "decoding=threshold", "decoding.eotp=true", "decoding.cache=dual",
                      "task.limit=4", "batch_size=4", "warmup=0", "pair_rounds=1", "tracking=wandb_offline",
                      store=folder.parent)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0 and "skipped: complete record" in output, output[-3000:]
    cell_runs = [p for p in folder.parent.rglob("offline-run-*") if p.parent != folder.parent / "wandb"]
    assert len(cell_runs) == 1  # the report's analysis run (store/wandb) is not a cell's


def test_a_failed_cell_run_ends_failed_with_its_error(tmp_path):
    run = harness_cli("task=gsm8k", f"task.data_dir={tmp_path / 'nowhere'}", "tracking=wandb_offline",
                      store=tmp_path)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 1, output[-3000:]
    (record_file,) = tmp_path.rglob("result.json")
    record = json.loads(record_file.read_text())
    (run_dir,) = offline_runs(record_file.parent)
    shown = inspect(run_dir)
    assert (shown["state"], shown["exit_code"]) == ("failed", 1)
    assert shown["summary"]["status"] == "failed" and shown["summary"]["error"] == record["error"]
    assert "gsm8k/test.jsonl" in record["error"]
    assert record["error"] in "\n".join(line["line"] for line in shown["console"])  # the cell's log line
    assert shown["name"] == f"gsm8k · baseline · {record['config_hash'][:6]}"


def test_wandb_failures_never_fail_the_cell_or_touch_its_record(tmp_path, monkeypatch, caplog):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("W&B is down")
    settings = settings_for(tmp_path, "task=arith", "decoding=baseline", "task.limit=2", "tracking=wandb_offline")
    with caplog.at_level(logging.WARNING, logger=tracking.log.name):
        with monkeypatch.context() as patched:
            patched.setattr(wandb, "init", broken)  # the run cannot start
            assert run_cell(settings, tmp_path / "store" / "a", "cpu")["status"] == "complete"
        with monkeypatch.context() as patched:
            patched.setattr(wandb, "Table", broken)  # the run starts, then its samples cannot be logged
            assert run_cell({**settings, "force": True}, tmp_path / "store" / "b", "cpu")["status"] == "complete"
    warnings = [r.getMessage() for r in caplog.records if r.name == tracking.log.name]
    assert len(warnings) == 2 and all("W&B is down" in w for w in warnings)
    for name in ("a", "b"):
        assert json.loads((tmp_path / "store" / name / "result.json").read_text())["status"] == "complete"
    assert not offline_runs(tmp_path / "store" / "a")
    (half_logged,) = offline_runs(tmp_path / "store" / "b")
    assert inspect(half_logged)["state"] == "failed"  # its samples are missing: W&B must not show it whole


def failing_cell(tmp_path, name: str, mode: str) -> dict:
    settings = settings_for(tmp_path, "task=gsm8k", f"task.data_dir={tmp_path / 'nowhere'}", f"tracking={mode}")
    return run_cell(settings, tmp_path / "store" / name, "cpu")


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_online_wandb_without_network_gives_up_once_per_sweep_and_logs_offline(tmp_path, monkeypatch, caplog):
    import wandb
    wandb.teardown()  # a service started by an earlier test would keep its own settings
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{unused_port()}")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    modes = []
    real_init = wandb.init

    def init(*args, **kwargs):
        modes.append(kwargs["mode"])
        return real_init(*args, **kwargs)
    monkeypatch.setattr(wandb, "init", init)
    with caplog.at_level(logging.INFO, logger=tracking.log.name):
        failing_cell(tmp_path, "first", "wandb_online")
        failing_cell(tmp_path, "second", "wandb_online")
    wandb.teardown()
    assert modes == ["online", "offline", "offline"]  # the second cell does not wait for the network again
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == tracking.log.name]
    assert len(warnings) == 1 and "W&B online unreachable" in warnings[0]
    assert (tmp_path / "store" / tracking.OFFLINE_MARKER).exists()
    for name in ("first", "second"):
        (run_dir,) = offline_runs(tmp_path / "store" / name)
        assert inspect(run_dir)["state"] == "failed"


def test_the_report_keeps_one_analysis_run_per_sweep(complete_cell, monkeypatch):
    """Offline, W&B writes a run folder per call; both carry the sweep's one run id and are marked as resumed,
    so `wandb sync` uploads them in order into that one run (online, `resume="allow"` appends to it)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = complete_cell[0].parent
    for _ in range(2):
        report_main([str(sweep), "--formats", "png", "--wandb", "me/dllm-test", "--group", "s",
                     "--wandb-mode", "offline"])
    runs = [inspect(run_dir, summary=False) for run_dir in offline_runs(sweep / "analysis")]
    assert len(runs) == 2
    for records in runs:
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        assert run["run_id"] == analysis_run_id("dllm-test", "s") and run["resume"] is True
        assert (run["job_type"], run["display_name"], run["run_group"]) == ("analysis", "analysis · s", "s")
    latest = inspect(offline_runs(sweep / "analysis")[-1])
    assert any(key.startswith("figures/pareto") for key in latest["summary"])
    assert "tables/frontier_speedup" in latest["summary"]
    assert analysis_run_id("dllm-test", "other") != analysis_run_id("dllm-test", "s")
