"""Timing a cell on a shared machine: the paired speedup recorded by a real cell (real model, lm-eval, Hydra
config, store), `threads` applied and recorded, the trust rule on hand-made timings, and the load benchmark's
pieces (its load generator, its 16-cell subset of the quickstart, its table). No timed assertions."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from hydra.core.hydra_config import HydraConfig

from harness.bench_load import busy_cores, cells_of, subset, table
from harness.run import run_cell
from harness.timing import available_cores, paired_ratios, resolve_threads, untrusted_reasons

from hydra_plugins.dllm_harness.grids_sweeper import GridsSweeper

from .test_sweep import composed, settings_for

CALM = dict(speedup=4.0, q1=3.8, q3=4.2, nfe_ratio=4.5, cpu_seconds=9.0, wall_seconds=5.0, threads=2, cores=2,
            load_average=[1.0, 1.0, 1.0], load_average_after=[1.5, 1.0, 1.0])


@pytest.fixture(scope="module")
def paired_store(tmp_path_factory):
    """A real threshold cell on one thread (its plain baseline runs first, into the store)."""
    tmp_path = tmp_path_factory.mktemp("paired")
    settings = settings_for(tmp_path, "task=perm", "decoding=threshold", "threads=1", "pair_rounds=3")
    record = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert record["status"] == "complete", record.get("error")
    return tmp_path / "store"


def test_a_cell_records_its_paired_speedup_with_spread_and_what_the_timing_saw(paired_store):
    record = json.loads((paired_store / "cell" / "result.json").read_text())
    timing = record["timing"]
    assert timing["pairs"] == len(timing["ratios"]) == 3 and all(r > 0 for r in timing["ratios"])
    assert record["speedup_q1"] <= record["speedup"] <= record["speedup_q3"]
    assert min(timing["ratios"]) <= record["speedup_q1"] and record["speedup_q3"] <= max(timing["ratios"])
    assert sorted(timing["ratios"])[1] == record["speedup"]  # the median of three rounds
    assert math.isfinite(record["speedup"]) and record["nfe_ratio"] > 1
    assert timing["threads"] == record["protocol"]["threads"] == 1 and torch.get_num_threads() == 1
    assert timing["cpu_seconds"] > 0 and timing["wall_seconds"] > 0 and timing["cores"] == available_cores()
    assert len(timing["load_average"]) == len(timing["load_average_after"]) == 3
    assert timing["trusted"] is (not timing["reasons"])

    (baseline,) = (paired_store / "baselines").glob("*/result.json")
    baseline = json.loads(baseline.read_text())
    assert (baseline["speedup"], baseline["speedup_q1"], baseline["speedup_q3"]) == (1.0, 1.0, 1.0)
    assert baseline["timing"]["pairs"] == 0 and isinstance(baseline["timing"]["trusted"], bool)


@pytest.mark.parametrize("override, message", [
    *((f"threads={bad}", "threads must be auto or a positive integer") for bad in ("0", "-2", "two", "1.5")),
    ("pair_rounds=-1", "pair_rounds=-1: must be an integer >= 0"),
])
def test_bad_timing_settings_fail_the_cell_in_one_line_before_the_model_loads(tmp_path, override, message):
    record = run_cell(settings_for(tmp_path, override), tmp_path / "cell", "cpu")
    assert record["status"] == "failed" and message in record["error"]
    assert "\n" not in record["error"] and "model_load" not in record["timings"]


def test_auto_threads_divide_the_cores_among_parallel_jobs():
    assert resolve_threads("auto") == available_cores() and resolve_threads(3) == 3
    cfg = composed("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert resolve_threads("auto") == max(1, available_cores() // 2)
    finally:
        HydraConfig.instance().cfg = None


def test_a_hardware_free_cell_has_no_speedup_but_its_nfe_ratio(tmp_path):
    """pair_rounds=0 (a board of accuracy and NFE): no paired rounds, no speedup, no timing to trust."""
    from harness.progress import result_line
    settings = settings_for(tmp_path, "task=perm", "decoding=threshold", "threads=1", "pair_rounds=0")
    record = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert record["status"] == "complete", record.get("error")
    assert record["speedup"] is None and record["timing"]["ratios"] == [] and not record["timing"]["trusted"]
    assert record["nfe_ratio"] > 1  # from the plain baseline's stored record
    assert "speedup not measured (pair_rounds=0)" in result_line(record)


def test_paired_rounds_alternate_their_order_and_divide_throughputs():
    order = []

    def decoder(name, tokens, seconds):
        return lambda: order.append(name) or (tokens, seconds)
    ratios = paired_ratios(decoder("baseline", 100, 2.0), decoder("method", 90, 0.5), rounds=4)
    assert order == ["baseline", "method", "method", "baseline"] * 2
    assert ratios == [pytest.approx((90 / 0.5) / (100 / 2.0))] * 4
    with pytest.raises(ValueError, match="no tokens"):
        paired_ratios(decoder("baseline", 0, 2.0), decoder("method", 90, 0.5), rounds=1)


@pytest.mark.parametrize("changes, flagged", [
    ({}, None),
    ({"cpu_seconds": 4.0}, "waited for cores"),  # 4 CPU-s in 5 s on 2 threads
    ({"load_average_after": [6.0, 5.0, 3.0]}, "load average 6.0 above the 2 cores + 1"),
    ({"load_average": [2.6, 2.0, 1.0]}, None),  # the run's own 2 threads on 2 cores, and a little more
    ({"q1": 3.0, "q3": 5.0}, "spread 50% of their median"),
    ({"speedup": 0.8, "q1": 0.78, "q3": 0.82}, "disagree in direction"),  # 4.5x fewer forwards, yet slower
    ({"nfe_ratio": 0.5}, "disagree in direction"),  # twice the forwards, yet faster
    ({"nfe_ratio": None}, None),
])
def test_the_trust_rule_flags_what_it_should(changes, flagged):
    reasons = untrusted_reasons(**{**CALM, **changes})
    assert reasons == [] if flagged is None else len(reasons) == 1 and flagged in reasons[0]


def test_the_load_generator_keeps_cores_busy_and_always_stops():
    with pytest.raises(KeyboardInterrupt):
        with busy_cores(2) as workers:
            assert len(workers) == 2 and all(w.is_alive() for w in workers)
            raise KeyboardInterrupt
    assert not any(w.is_alive() for w in workers)


def test_the_benchmark_runs_every_strategy_with_and_without_eotp_on_both_dependency_tasks():
    overrides = subset(0.7)
    sweeper = composed(*overrides[:2], hydra=True).hydra.sweeper  # the rest are the command line's sweeps
    grids = GridsSweeper(None, dict(sweeper.params), sweeper.grids)
    grids.hydra_context = SimpleNamespace(config_loader=None)
    jobs = grids.jobs(overrides[2:])
    cells = {tuple(sorted(o for o in job if not o.startswith("decoding.cache"))) for job in jobs}
    assert len(jobs) == len(cells) == 16 and all("decoding.cache=none" in job for job in jobs)
    assert {o for job in jobs for o in job if o.startswith(("decoding=", "task=", "decoding.threshold"))} == {
        "decoding=baseline", "decoding=threshold", "decoding=oracle", "decoding=learned", "task=code",
        "task=perm", "decoding.threshold=0.7"}


def test_the_benchmark_table_compares_runs_from_the_records(paired_store):
    cells = cells_of(paired_store)
    lines, targets = table({"idle": cells, "loaded": cells})
    assert len(lines) == 2 + len(cells) == 4 and all(" +0% " in line for line in lines[2:])
    assert targets["speedups within 25% between the runs"]
    assert set(targets) == {"speedups within 25% between the runs", "idle: NFE ratio >= 2 -> speedup > 1",
                            "loaded: NFE ratio >= 2 -> speedup > 1"}
