"""A strategy is one declaration: every registered policy composes through Hydra as `decoding=<name>` (typed,
its own knobs only), is range-checked before a model loads, and is recorded with its own knobs only.
Parametrized over the registry, so a new strategy is covered by adding its file."""
import dataclasses
import json
import math
import typing

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

import harness.run  # noqa: F401  (registers the schemas)
from harness.decoding import LOOP_SWITCHES, POLICIES, ConfigError, DecodeConfig, method_of
from harness.lmeval.model import decode_config
from harness.run import cell_settings, run_cell

from .conftest import REPO

STRATEGIES = sorted(POLICIES)
KNOBS = [(s, f) for s in STRATEGIES for f in dataclasses.fields(POLICIES[s].Config)]


def settings(*overrides, store="unused") -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"store={store}", "tracking=disabled", *overrides])
    return cell_settings(cfg, "cpu")


def hint(strategy, knob):
    return typing.get_type_hints(POLICIES[strategy].Config)[knob.name]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_composes_with_only_its_own_knobs_and_validates(strategy):
    decoding = settings(f"decoding={strategy}")["decoding"]
    assert list(decoding) == list(LOOP_SWITCHES) + list(POLICIES[strategy].knob_names())
    config, _ = decode_config(decoding)  # what check_cell runs before the model loads
    assert config.strategy == strategy and type(config.policy) is POLICIES[strategy].Config
    assert config.to_dict() == {**decoding, "gen_length": config.block_length}  # G: per request (placeholder B)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_misspelt_or_foreign_knob_fails_at_compose_time(strategy):
    with pytest.raises((HydraException, OmegaConfBaseException), match="decoding.tresh"):
        settings(f"decoding={strategy}", "decoding.tresh=1")
    foreign = next((k for s, f in KNOBS if s != strategy and (k := f.name) not in POLICIES[strategy].knob_names()))
    with pytest.raises((HydraException, OmegaConfBaseException), match=f"decoding.{foreign}"):
        settings(f"decoding={strategy}", f"decoding.{foreign}=1")
    with pytest.raises(ConfigError, match=f"unknown decoding setting.*'{foreign}'.*its knobs"):
        DecodeConfig.create(strategy=strategy, **{foreign: 1})


@pytest.mark.parametrize("strategy, knob", [(s, f) for s, f in KNOBS if str not in typing.get_args(hint(s, f))
                                            and hint(s, f) is not str], ids=lambda x: getattr(x, "name", x))
def test_a_knob_of_the_wrong_type_fails_at_compose_time(strategy, knob):
    with pytest.raises((HydraException, OmegaConfBaseException), match=f"decoding.{knob.name}"):
        settings(f"decoding={strategy}", f"decoding.{knob.name}=not_a_number")


@pytest.mark.parametrize("strategy, knob", [(s, f) for s, f in KNOBS if float in (hint(s, f), *typing.get_args(
    hint(s, f)))], ids=lambda x: getattr(x, "name", x))
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_float_knob_is_one_line_naming_it(strategy, knob, value):
    decoding = settings(f"decoding={strategy}", f"decoding.{knob.name}={value}")["decoding"]
    assert math.isnan(decoding[knob.name]) or math.isinf(decoding[knob.name])
    with pytest.raises(ConfigError, match=f"^decoding.{knob.name} must be a finite number, got {value}$"):
        decode_config(decoding)


RANGE_CASES = [
    ("baseline", "steps", 0, "> 0"), ("baseline", "remasking", "lowest", "low_confidence or random"),
    ("threshold", "threshold", 0.0, r"in \(0, 1\]"), ("threshold", "threshold", 1.5, r"in \(0, 1\]"),
    ("factor", "factor", 0.0, "> 0"), ("entropy_bounded", "gamma", -0.1, ">= 0"),
    ("learned", "filter_threshold", 0.0, r"in \(0, 1\]"), ("topk", "k", 0, ">= 1"),
    ("margin", "margin_threshold", 1.5, r"in \[0, 1\]"),
    ("wino", "threshold", 1.5, r"in \[0, 1\]"), ("saber", "n", 0, ">= 1"), ("remdm", "remdm_number", 0, ">= 1"),
    ("rcr", "steps", 0, "> 0"),
    ("credit", "maximum_unroll", 0, ">= 1"), ("credit", "decay_beta", 1.5, r"in \[0, 1\]"),
    ("hierarchy", "low_threshold", 1.5, r"in \[0, 1\]"), ("d3llm", "decoded_token_threshold", 1.5, r"in \[0, 1\]"),
    ("klass", "conf_threshold", 1.5, r"in \[0, 1\]"), ("klass", "kl_history_length", 0, ">= 1"),
    ("prophet", "late_threshold", -1.0, ">= 0"), ("prophet", "answer_start", -1, ">= 0"),
    ("slow_fast", "k_exploration_steps", 0, ">= 1"), ("slow_fast", "high_confidence_threshold", 1.5, r"in \[0, 1\]"),
    ("llada2_threshold", "threshold", 1.5, r"in \[0, 1\]"), ("llada2_threshold", "steps", 0, ">= 1"),
    ("llada2_threshold", "minimal_topk", 0, ">= 1"),
    ("maskgit_plus", "eps", 1.0, r"in \[0, 1\)"), ("topk_margin", "alg_temp", -1.0, ">= 0"), ("entropy", "steps", 0, "> 0"),
    ("fastdllm_dream", "rule", "confidence", "threshold or entropy"),
    ("fastdllm_dream", "threshold", 1.5, r"in \[0, 1\]"), ("fastdllm_dream_canvas", "steps", 0, "> 0"),
]


@pytest.mark.parametrize("strategy, knob, value, rule", RANGE_CASES)
def test_out_of_range_knobs_fail_before_the_model_loads(strategy, knob, value, rule):
    decoding = settings(f"decoding={strategy}", f"decoding.{knob}={value}")["decoding"]  # typed: composes
    with pytest.raises(ConfigError, match=f"^decoding.{knob} must be {rule}, got "):
        decode_config(decoding)


def test_every_strategy_with_knobs_has_a_range_case():
    """A new strategy with knobs adds its out-of-range values to RANGE_CASES."""
    assert {case[0] for case in RANGE_CASES} >= {s for s in STRATEGIES if POLICIES[s].knob_names()}


def test_lm_eval_model_args_take_flat_knobs_and_reject_foreign_ones():
    config, fixed = decode_config({"strategy": "topk", "k": 3, "eotp": True, "gen_length": 32, "block_length": 8})
    assert (config.policy.k, config.eotp, fixed) == (3, True, 32)
    with pytest.raises(ConfigError, match=r"unknown decoding setting\(s\) \['threshold'\] for strategy 'topk'"):
        decode_config({"strategy": "topk", "threshold": 0.9})
    assert decode_config({"strategy": "topk", "k": "3"})[0].policy.k == 3  # lm-eval's strings, as declared
    with pytest.raises(ConfigError, match="decoding.k must be int, got 'three'"):
        decode_config({"strategy": "topk", "k": "three"})


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """One real cell per registered strategy (arith, 2 problems) in one store, sharing its baseline."""
    store = tmp_path_factory.mktemp("store")
    out = {}
    for strategy in STRATEGIES:
        cell = settings("task=arith", "task.limit=2", "batch_size=2", "warmup=0", f"decoding={strategy}",
                        store=store)
        run_cell(cell, store / strategy, "cpu")
        out[strategy] = json.loads((store / strategy / "result.json").read_text())
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_record_holds_only_its_strategys_knobs(records, strategy):
    record, knobs = records[strategy], list(POLICIES[strategy].knob_names())
    assert record["status"] == "complete", record.get("error")
    own = {k: record["config"]["decoding"][k] for k in knobs}
    assert record["method"] == {"strategy": strategy, "knobs": own, "needs_reference": POLICIES[strategy].needs_reference,
                                "label": method_of({"strategy": strategy, **own})["label"]}
    assert list(record["config"]["decoding"]) == list(LOOP_SWITCHES) + knobs
    assert sorted(record["protocol"]["decoding"]) == sorted(list(LOOP_SWITCHES) + knobs)
    assert record["speed"]["nfe"] > 0 and record["speedup"] > 0
