"""The Hydra application: configs compose (and bad ones fail at compose time), cells are recorded, skipped
when complete, recorded as failed without stopping a sweep, and real multiruns (joblib; killed and
restarted) write each record exactly once. A sweep says what each cell gave (console and the cell's
run.log) and how far it is, in short cell folders; its analysis goes into a folder of its own."""
import json
import logging
import math
import os
import re
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
from analysis.report import main as report_main
from harness.decoding import POLICIES
from harness.run import cell_settings, run_cell
from harness.fingerprints import cell_identity
from harness.progress import progress_line, result_line
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


def test_a_cell_records_metrics_speed_and_speedup_then_is_skipped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="harness.run")
    settings = settings_for(tmp_path, "task=arith", "decoding=threshold")
    record = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert record["status"] == "complete"
    saved = json.loads((tmp_path / "store" / "cell" / "result.json").read_text())
    line = caplog.messages[-1]  # the cell's result line, from the record as saved
    assert line == result_line(saved) and line.startswith("arith | threshold τ=0.9 | accuracy ")
    assert (f"NFE {saved['speed']['nfe']:.2f} | TPF {saved['speed']['tpf']:.2f} | speedup {saved['speedup']:.2f} "
            f"[{saved['speedup_q1']:.2f}–{saved['speedup_q3']:.2f}]") in line
    assert line.endswith(f" | {saved['timings']['cell']:.1f} s")
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
    assert caplog.messages[-1].endswith(f"| skipped: complete record {saved['config_hash']} at {again['path']}")
    forced = run_cell({**settings, "force": True}, tmp_path / "store" / "cell", "cpu")
    assert forced["status"] == "complete" and "path" not in forced


def test_a_failing_cell_is_recorded_as_failed(tmp_path, caplog):
    settings = settings_for(tmp_path, "task=gsm8k", f"task.data_dir={tmp_path / 'nowhere'}")
    record = run_cell(settings, tmp_path / "store" / "bad", "cpu")
    assert record["status"] == "failed" and "gsm8k/test.jsonl" in record["error"]
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.messages[-1].startswith(f"gsm8k | baseline | failed: {record['error']} | ")
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
    for record in records.values():  # each worker logs its cells' lines (a baseline's may say skipped)
        assert result_line(record).rsplit(" | ", 1)[0] in output
    assert sorted(re.findall(r"\[(\d)/4\] ", output)) == ["1", "2", "3", "4"]
    for task in ("arith", "perm"):  # the on_multirun_end callback's report, in its own folder
        assert (tmp_path / "analysis" / f"pareto_{task}.png").stat().st_size > 0
    assert "perm" in (tmp_path / "analysis" / "tables.md").read_text()


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


@pytest.fixture(scope="module")
def four_cells(tmp_path_factory):
    """A real four-cell sweep (basic launcher, in-process) and its console output."""
    store = tmp_path_factory.mktemp("four_cells")
    run = harness_cli("-m", "task=arith,perm", "decoding=baseline,threshold", "task.limit=4", "batch_size=4",
                      "warmup=0", "tracking=disabled", store=store)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    return store, output


def cell_records(store: Path) -> dict[Path, dict]:
    return {p.parent: json.loads(p.read_text()) for p in store.rglob("result.json")}


def test_each_cell_says_its_result_and_the_sweeps_progress_on_the_console_and_in_its_log(four_cells):
    store, output = four_cells
    lines = [line.split(" - ", 1)[1] for line in output.splitlines() if "][INFO] - " in line]
    records = cell_records(store)
    assert len(records) == 4  # every baseline ran as a cell of its own
    for folder, record in records.items():
        line = result_line(record)
        assert line in lines and line in (folder / "run.log").read_text()  # and only its own cell's:
        assert len(re.findall(r"\| accuracy ", (folder / "run.log").read_text())) == 1
    shown = [line.split(" | ")[:2] for line in lines if " | accuracy " in line]
    assert shown == [["arith", "baseline"], ["arith", "threshold τ=0.9"], ["perm", "baseline"],
                     ["perm", "threshold τ=0.9"]]
    progress = [line for line in lines if line.startswith("[")]
    assert [p.split("]")[0] for p in progress] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert all(re.fullmatch(r"\[\d/4\] (\d+ min )?\d+ s elapsed, ETA (\d+ min )?\d+ s", p) for p in progress[:3])
    assert progress[3].endswith(" s elapsed")  # nothing left to wait for
    assert [" | accuracy " in line for line in lines[-8:]] == [True, False] * 4  # each cell, then the count


def test_cell_folders_are_task_then_short_names_that_hold_no_path(four_cells):
    store, _ = four_cells
    names = sorted(str(folder.relative_to(store)) for folder in cell_records(store))
    assert names == [f"{task}/{strategy},batch_size=4,limit=4,warmup=0" for task in ("arith", "perm")
                     for strategy in ("baseline", "threshold")]
    paths = ("model.path=/models/deep/folder/LLaDA-8B-Instruct", "model.filter=/models/filters/layer_2_flan.pth")
    deep = composed("store=/results/s", "task=gsm8k", "decoding=learned", "decoding.eotp=true", *paths, hydra=True)
    name = OmegaConf.select(deep, "hydra.run.dir")
    assert re.fullmatch(r"/results/s/gsm8k/learned,eotp=true,model\.filter=layer_2_flan\.pth@\w{4},"
                        r"model\.path=LLaDA-8B-Instruct@\w{4}", name), name
    other = composed("store=/results/s", "task=gsm8k", "decoding=learned", "decoding.eotp=true", paths[1],
                     "model.path=/elsewhere/LLaDA-8B-Instruct", hydra=True)
    assert OmegaConf.select(other, "hydra.run.dir") != name  # same folder name, other path: another cell
    many = composed("store=/r", *[f"decoding.{k}={v}" for k, v in (("gen_length", 256), ("block_length", 32),
                    ("temperature", 0.5), ("seed", 12345), ("cache", "prefix"), ("eotp", True))],
                    "batch_size=16", "warmup=2", "pair_rounds=5", "threads=1", "model.filter_threshold=0.5",
                    hydra=True)
    cut = OmegaConf.select(many, "hydra.run.dir").split("/")[-1]
    assert len(cut) <= 120 and re.search(r",gen_length=256,.*-[0-9a-f]{16}$", cut)  # cut, then its digest


def test_a_rerun_sweep_skips_its_cells(four_cells):
    store, _ = four_cells
    before = {folder: (record, (folder / "result.json").stat().st_mtime_ns)
              for folder, record in cell_records(store).items()}
    rerun = harness_cli("-m", "task=arith,perm", "decoding=baseline,threshold", "task.limit=4", "batch_size=4",
                        "warmup=0", "tracking=disabled", store=store)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output[-3000:]
    assert {f: (r, (f / "result.json").stat().st_mtime_ns) for f, r in cell_records(store).items()} == before
    for folder, (record, _) in before.items():
        assert f"{result_line(record).rsplit(' | ', 1)[0]} | skipped: complete record {record['config_hash']} " \
               f"at {folder}" in output


def test_a_read_only_store_is_analysed_into_another_folder(four_cells, tmp_path):
    store, _ = four_cells
    entries = [store, *store.rglob("*")]
    modes = {p: p.stat().st_mode for p in entries}
    written = lambda: {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in [store, *store.rglob("*")]}
    before = written()
    for path in sorted(entries, key=lambda p: -len(p.parts)):  # files before their folders
        path.chmod(modes[path] & ~0o222)
    try:
        report_main([str(store), "--out", str(tmp_path / "out"), "--formats", "png"])
        after = written()
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert after == before  # nothing written into the store (a check that holds for root too)
    assert "| threshold τ=0.9 |" in (tmp_path / "out" / "tables.md").read_text()
    assert {p.name for p in (tmp_path / "out").glob("pareto_*.png")} == {
        f"pareto_{task}{kind}.png" for task in ("arith", "perm") for kind in ("", "_tpf")}


def test_progress_line():
    assert progress_line(12, 96, 190) == "[12/96] 3 min 10 s elapsed, ETA 22 min 10 s"
    assert progress_line(1, None, 5) == "[1/?] 5 s elapsed"
    assert progress_line(95, 96, 4 * 3600) == "[95/96] 4 h 00 min elapsed, ETA 2 min 32 s"


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
    report = (tmp_path / "analysis" / "tables.md").read_text()
    aup = report[report.index("## AUP"):report.index("## Paper tables")]
    for label in ("topk k=2", "topk k=3", "margin margin_threshold=0.9"):
        assert label in report
    assert "| topk |" in aup and "| margin |" in aup  # a method family per strategy, its knob along the curve
    for task in ("arith", "perm"):
        assert (tmp_path / "analysis" / f"pareto_{task}.png").stat().st_size > 0
