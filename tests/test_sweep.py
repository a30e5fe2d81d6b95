"""The Hydra application: configs compose (and bad ones fail at compose time), cells are recorded, skipped
when complete, recorded as failed without stopping a sweep, and real multiruns (joblib; killed and
restarted) write each record exactly once."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import harness.run  # noqa: F401  (registers the schemas)
from analysis.collect import collect
from harness.decoding import POLICIES
from harness.run import cell_settings, run_cell
from harness.fingerprints import cell_identity
from hydra_plugins.dllm_harness.grids_sweeper import GridsSweeper

from .conftest import REPO

CONF = REPO / "conf"
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("model", "task", "tracking")}
GROUPS["decoding"] = sorted(POLICIES)  # generated from the registry (harness/schema.py), no YAML
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def composed(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def resolved(cfg) -> dict:
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False, enum_to_str=True)


def grid_jobs(cfg) -> list[list[str]]:
    sweeper = cfg.hydra.sweeper
    grids = GridsSweeper(None, dict(sweeper.get("params") or {}), sweeper.get("grids"))
    grids.hydra_context = SimpleNamespace(config_loader=None)
    return grids.jobs([])


@pytest.mark.parametrize("group, option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_group_option_composes(group, option):
    cfg = resolved(composed(f"{group}={option}"))
    assert cfg[group]
    if group == "decoding":
        assert cfg["decoding"]["strategy"] == option
        assert cfg["decoding"]["block_length"] == 8  # the default model's block length
    assert cfg["store"].endswith("/default")


def test_learned_takes_the_models_filter_and_its_threshold():
    tiny = resolved(composed("decoding=learned"))["decoding"]
    assert (tiny["filter_path"], tiny["filter_threshold"]) == ("tiny", 0.8)  # tuned on the validation split
    llada = resolved(composed("decoding=learned", "model=llada_8b_instruct", "model.filter=flan.pth"))["decoding"]
    assert (llada["filter_path"], llada["filter_threshold"]) == ("flan.pth", 0.96)  # the paper's
    assert resolved(composed("decoding=learned", "decoding.filter_threshold=0.9"))["decoding"]["filter_threshold"] == 0.9
    assert tiny["outranked_threshold"] is None  # the paper's rule: one tau_f for every position
    stricter = resolved(composed("decoding=learned", "decoding.outranked_threshold=0.96"))["decoding"]
    assert stricter["outranked_threshold"] == 0.96


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_every_job_of_its_grid(experiment):
    cfg = composed(f"experiment={experiment}", hydra=True)
    assert cfg.sweep == experiment
    jobs = grid_jobs(cfg) if cfg.hydra.sweeper.get("grids") else [[]]
    for job in jobs:
        overrides = [o for o in job if not o.startswith("hydra.")]
        composed(f"experiment={experiment}", *overrides)


def test_quickstart_never_crosses_a_strategy_with_anothers_knob():
    jobs = grid_jobs(composed("experiment=quickstart", hydra=True))
    assert len(jobs) == 4 * 2 * 2 * (1 + 3 + 1 + 1)  # tasks x EoTP x cache x (baseline, 3 τ, oracle, learned)
    for job in jobs:
        strategy = next(o.split("=")[1] for o in job if o.startswith("decoding="))
        assert any(o.startswith("decoding.threshold=") for o in job) == (strategy == "threshold")


@pytest.mark.parametrize("overrides, named", [
    (["decoding=oracle", "decoding.threshold=0.5"], "threshold"),
    (["decoding=baseline", "decoding.filter_threshold=0.9"], "filter_threshold"),
    (["decoding=threshold", "decoding.outranked_threshold=0.9"], "outranked_threshold"),
    (["decoding=greedy"], "decoding"),
    (["decoding.cache=triple"], "cache"),
    (["decoding.threshold=high", "decoding=threshold"], "threshold"),
    (["task.limt=5"], "limt"),
    (["bogus=1"], "bogus"),
    (["model=llama"], "model"),
])
def test_invalid_settings_fail_at_compose_time_naming_the_key(overrides, named):
    with pytest.raises((HydraException, OmegaConfBaseException), match=named):
        resolved(composed(*overrides))


def settings_for(tmp_path, *overrides) -> dict:
    cfg = composed(f"store={tmp_path / 'store'}", "tracking=disabled", "task.limit=4", "batch_size=4", "warmup=0",
                   *overrides)
    return cell_settings(cfg, "cpu")


def test_a_cell_records_metrics_speed_and_speedup_then_is_skipped(tmp_path):
    settings = settings_for(tmp_path, "task=arith", "decoding=threshold")
    record = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert record["status"] == "complete"
    saved = json.loads((tmp_path / "store" / "cell" / "result.json").read_text())
    assert (saved["config_hash"], saved["fingerprints"]) == cell_identity(settings)
    assert saved["config"]["task"]["name"] == "arith"
    assert 0 <= saved["metrics"]["accuracy"] <= 1 and saved["speed"]["nfe"] < 32
    assert saved["nfe_ratio"] == pytest.approx(32 / saved["speed"]["nfe"])  # vs the plain baseline
    assert saved["speedup"] > 0 and saved["versions"]["torch"] and saved["protocol"]["batch_size"] == 4
    baseline = list((tmp_path / "store" / "baselines").glob("*/result.json"))
    assert len(baseline) == 1  # run first, because the store had no baseline for this cell
    samples = (tmp_path / "store" / "cell" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 and "nfe" in json.loads(samples[0])

    cells = collect([tmp_path / "store"]).cells  # what the analysis reads back from the store
    assert len(cells) == 2 and set(cells.strategy) == {"baseline", "threshold"}
    assert (cells.gen_length == 32).all() and (cells.block_length == 8).all()  # G from the task's max_gen_toks

    again = run_cell(settings, tmp_path / "store" / "other", "cpu")
    assert again["path"] == str(tmp_path / "store" / "cell") and not (tmp_path / "store" / "other").exists()
    forced = run_cell({**settings, "force": True}, tmp_path / "store" / "cell", "cpu")
    assert forced["status"] == "complete" and "path" not in forced


def test_a_failing_cell_is_recorded_as_failed(tmp_path):
    settings = settings_for(tmp_path, "task=gsm8k", f"task.data_dir={tmp_path / 'nowhere'}")
    record = run_cell(settings, tmp_path / "store" / "bad", "cpu")
    assert record["status"] == "failed" and "gsm8k/test.jsonl" in record["error"]
    saved = json.loads((tmp_path / "store" / "bad" / "result.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == record["error"]


def harness_cli(*args, store: Path, env=None, analyse=False, **popen):
    command = [sys.executable, "-m", "harness", *args, f"store={store}", f"analyse={str(analyse).lower()}"]
    environment = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    return subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def complete_records(store: Path) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in store.rglob("result.json")]
    complete = [r for r in records if r["status"] == "complete"]
    hashes = [r["config_hash"] for r in complete]
    assert len(hashes) == len(set(hashes)), "a cell was recorded twice"
    return {r["config_hash"]: r for r in complete}


GRID = ["-m", "task=arith,perm", "decoding.eotp=false,true", "task.limit=4", "batch_size=4", "warmup=0",
        "tracking=disabled"]


def test_joblib_multirun_writes_one_record_per_cell_then_analyses_the_sweep(tmp_path):
    run = harness_cli(*GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", store=tmp_path, analyse=True)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output[-3000:]
    records = complete_records(tmp_path)
    assert len(records) == 4
    assert {(r["config"]["task"]["name"], r["config"]["decoding"]["eotp"]) for r in records.values()} == {
        ("arith", False), ("arith", True), ("perm", False), ("perm", True)}
    for task in ("arith", "perm"):  # the on_multirun_end callback's report
        assert (tmp_path / f"pareto_{task}.png").stat().st_size > 0
    assert "perm" in (tmp_path / "tables.md").read_text()


def test_a_killed_sweep_resumes_without_losing_or_repeating_cells(tmp_path):
    run = harness_cli(*GRID, store=tmp_path, start_new_session=True)
    deadline = time.time() + 240
    while len(complete_records(tmp_path)) < 2 and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate()
    before = complete_records(tmp_path)
    assert 2 <= len(before) < 4, "the sweep should have been killed part-way"

    rerun = harness_cli(*GRID, store=tmp_path)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output[-3000:]
    after = complete_records(tmp_path)
    assert len(after) == 4
    for digest, record in before.items():  # finished cells were skipped, their records untouched
        assert after[digest]["timings"] == record["timings"]
    assert output.count("skipped: complete record") == len(before)


def test_new_strategies_need_only_their_file_to_run_record_and_be_analysed(tmp_path):
    """topk and margin (one file each in harness/decoding/policies/) through a real two-task sweep: their
    records carry their own knobs, and the report's cells, AUP and Pareto plots include them."""
    grids = "hydra.sweeper.grids=[{decoding: topk, decoding.k: '2,3'}, {decoding: margin}]"
    run = harness_cli("-m", "hydra/sweeper=grids", grids, "task=arith,perm", "task.limit=8", "batch_size=4",
                      "warmup=0", "tracking=disabled", store=tmp_path, analyse=True)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    records = complete_records(tmp_path)
    methods = sorted((r["config"]["task"]["name"], r["method"]["strategy"], tuple(r["method"]["knobs"].items()))
                     for r in records.values() if r["method"]["strategy"] != "baseline")
    assert methods == [(task, *m) for task in ("arith", "perm") for m in
                       (("margin", (("margin_threshold", 0.9),)), ("topk", (("k", 2),)), ("topk", (("k", 3),)))]
    topk = [r for r in records.values() if r["method"]["strategy"] == "topk"]
    for r in topk:  # k per step, exactly: ceil(B / k) forwards per block
        B = r["config"]["decoding"]["block_length"]
        assert r["speed"]["nfe"] == r["speed"]["gen_length"] // B * math.ceil(B / r["method"]["knobs"]["k"])
    cells = collect([tmp_path]).cells
    assert {"k", "margin_threshold"} <= set(cells.columns) and cells.is_reference.sum() == 2  # two baselines
    report = (tmp_path / "tables.md").read_text()
    aup = report[report.index("## AUP"):report.index("## Paper tables")]
    for label in ("topk k=2", "topk k=3", "margin margin_threshold=0.9"):
        assert label in report
    assert "| topk |" in aup and "| margin |" in aup  # a method family per strategy, its knob along the curve
    for task in ("arith", "perm"):
        assert (tmp_path / f"pareto_{task}.png").stat().st_size > 0
