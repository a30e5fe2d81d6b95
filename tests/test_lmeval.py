"""lm-eval integration: the `dllm` model through real lm-eval on the embedded default (its Python API and its
CLI through `dllm-lm-eval`), the synthetic tasks' YAML, real task configs on the shared benchmark copies, and the
one-line errors raised before any model loads."""
import json
import logging
import os
import subprocess
import sys

import lm_eval
import lm_eval.api.model
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager
from lm_eval.utils import simple_parse_args_string

import harness.lmeval.model as dllm_module
from harness.decoding import ConfigError
from harness.lmeval import DLLM, TaskError, build_tasks, counted_tokens, cut_at_stop, evaluate, task_config
from harness.lmeval.cli import main as dllm_lm_eval
from harness.lmeval.model import decode_config
from harness.lmeval.tasks import TASK_YAML
from harness.tasks.synthetic import TASKS

from .conftest import DATA, FIXTURE, REPO

SPEED_KEYS = ("nfe", "tpf", "tokens", "raw_tokens", "seconds", "tokens_per_second", "eotp_skipped")


@pytest.fixture(scope="module")
def lm(default_model):
    return DLLM(default_model, block_length=8, batch_size=8, warmup=0)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything tries to load weights."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")
    monkeypatch.setattr(dllm_module, "load_model", refuse)


def request(prompt, until=(), task="stop_test", doc_id=0):
    return Instance("generate_until", {}, (prompt, {"until": list(until), "max_gen_toks": 32}), 0, (task, doc_id, 1))


@pytest.mark.parametrize("task", list(TASKS))
def test_simple_evaluate_on_each_synthetic_task_logs_speed_per_sample(lm, task):
    # a plain simple_evaluate: the model merges its speed statistics into what lm-eval returns
    results = lm_eval.simple_evaluate(model=lm, tasks=[task_config(task)], limit=8, log_samples=True,
                                      task_manager=TaskManager(include_defaults=False))
    assert 0.0 <= results["results"][task]["acc,none"] <= 1.0
    assert results["results"][task]["nfe,none"] > 0 and results["results"][task]["tokens_per_second,none"] > 0
    assert results["results"][task]["latency_p90,none"] >= results["results"][task]["latency_p50,none"] > 0
    assert results["speed"][task]["samples"] == 8  # this evaluation's requests only
    samples = results["samples"][task]
    assert len(samples) == 8
    for sample in samples:
        assert all(key in sample for key in SPEED_KEYS)
        assert sample["nfe"] >= 4  # at least one forward per block (G = 32, B = 8)
        assert sample["tpf"] == pytest.approx(sample["tokens"] / sample["nfe"])
        assert sample["tokens_per_second"] == pytest.approx(sample["tokens"] / sample["seconds"])
    assert results["speed_protocol"]["batch_size"] == 8


def test_model_by_name_with_model_args():
    results = lm_eval.simple_evaluate(model="dllm", model_args="model=tiny,block_length=8,strategy=threshold,"
                                      "threshold=0.9,warmup=0", tasks=[task_config("arith")], limit=6,
                                      task_manager=TaskManager(include_defaults=False))
    assert results["results"]["arith"]["acc,none"] >= 0.5  # the embedded default solves most arith problems


def test_strategy_and_eotp_change_speed_not_protocol(default_model):
    base = evaluate(DLLM(default_model, block_length=8, batch_size=10, warmup=0), ["arith"], limit=10)
    fast = evaluate(DLLM(default_model, block_length=8, batch_size=10, warmup=0, strategy="threshold", eotp=True),
                    ["arith"], limit=10)
    assert base["speed"]["arith"]["nfe"] == 32  # one token per step over G = 32
    assert fast["speed"]["arith"]["nfe"] < base["speed"]["arith"]["nfe"] / 2
    assert fast["speed"]["arith"]["eotp_skipped"] > 0


def test_max_gen_toks_sets_gen_length_unless_fixed(default_model):
    free = DLLM(default_model, block_length=8, warmup=0)
    assert free.config_for({"max_gen_toks": 20}).gen_length == 24  # rounded up to a multiple of B
    fixed = DLLM(default_model, block_length=8, gen_length=16, warmup=0)
    assert fixed.config_for({"max_gen_toks": 20}).gen_length == 16
    with pytest.raises(ConfigError, match="max length"):
        free.config_for({"max_gen_toks": 4096})


def test_stop_strings_cut_outputs(lm):
    prompt = "perm : 11 22 33 44"
    words = lm.generate_until([request(prompt)], disable_tqdm=True)[0].split()
    assert len(words) == 4
    cut = lm.generate_until([request(prompt, until=[words[1]], doc_id=1)], disable_tqdm=True)[0]
    assert cut.split() == words[:1]
    assert lm.stats["stop_test", 1] == [lm.stats["stop_test", 1][0]]
    assert lm.stats["stop_test", 1][0]["tokens"] == 1 and lm.stats["stop_test", 1][0]["raw_tokens"] == 4


def test_cut_and_token_count_rules(default_model):
    assert cut_at_stop("a b\nQuestion: c", ["Question:", "</s>"]) == "a b\n"
    assert cut_at_stop("abc", []) == "abc"
    eos = default_model.eos_token_id
    assert counted_tokens(default_model.tokenizer, "3 68 39", eos) == 3
    assert counted_tokens(default_model.tokenizer, "3 68 39 <|endoftext|> <|endoftext|>", eos) == 3  # EOS not counted
    assert counted_tokens(default_model.tokenizer, "", eos) == 0


def test_loglikelihood_prefers_the_right_continuation(default_model):
    lm = DLLM(default_model, block_length=8, mc_num=64, mc_batch_size=32, warmup=0)
    right, wrong = lm.loglikelihood([
        Instance("loglikelihood", {}, ("math : ann has 5 apples . ann finds 3 more . how many apples does ann "
                                       "have ?", " 5 + 3 = 8 . #### 8"), 0, ("x", 0, 1)),
        Instance("loglikelihood", {}, ("math : ann has 5 apples . ann finds 3 more . how many apples does ann "
                                       "have ?", " 5 + 3 = 2 . #### 2"), 0, ("x", 1, 1))], disable_tqdm=True)
    assert right[0] < 0 and wrong[0] < right[0] - 1.0
    with pytest.raises(NotImplementedError):
        lm.loglikelihood_rolling([])


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
@pytest.mark.parametrize("task, metric", [("gsm8k", "exact_match,strict-match"), ("math", "exact_match,none")])
def test_real_benchmarks_run_offline_through_the_real_scorers(default_model, task, metric):
    # The tiny model cannot solve these: the pipeline (local data, few-shot prompt, scorer) is under test.
    results = evaluate(DLLM(default_model, block_length=8, gen_length=16, warmup=0), [task], data_dir=DATA, limit=2,
                       num_fewshot=1)
    assert results["results"][task][metric] == 0.0
    sample = results["samples"][task][0]
    assert sample["arguments"][0][0].count("Question:" if task == "gsm8k" else "Problem:") == 2  # 1 shot + query
    assert sample["nfe"] > 0


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
def test_code_tasks_run_programs_only_with_both_opt_ins(default_model, monkeypatch, no_model_load):
    with pytest.raises(TaskError, match="confirm_run_unsafe_code"):
        evaluate("tiny", ["humaneval"], data_dir=DATA)
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(TaskError, match="HF_ALLOW_CODE_EVAL=1"):
        evaluate("tiny", ["mbpp"], data_dir=DATA, confirm_run_unsafe_code=True)


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
@pytest.mark.parametrize("task, shots", [("humaneval", 0), ("mbpp", 3)])
def test_code_pipelines_score_generated_code(default_model, monkeypatch, task, shots):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    results = evaluate(DLLM(default_model, block_length=8, gen_length=8, warmup=0), [task], data_dir=DATA, limit=1,
                       confirm_run_unsafe_code=True)
    assert results["results"][task]["pass@1,none"] == 0.0  # the tiny model's words are not Python
    prompt = results["samples"][task][0]["arguments"][0][0]
    assert prompt.count("[BEGIN]") == (shots + 1 if task == "mbpp" else 0)


def test_errors_come_before_any_model_is_loaded(no_model_load, tmp_path):
    with pytest.raises(TaskError, match="unknown task 'gsm9k'"):
        evaluate("tiny", ["gsm9k"])
    with pytest.raises(TaskError, match=str(tmp_path / "gsm8k" / "test.jsonl")):
        evaluate("tiny", ["gsm8k"], data_dir=tmp_path)
    with pytest.raises(TaskError, match="math reads"):
        evaluate("tiny", ["math"])
    rolling = task_config("perm") | {"task": "perm_rolling", "output_type": "loglikelihood_rolling",
                                     "doc_to_target": "", "metric_list": [{"metric": "word_perplexity"}]}
    rolling.pop("process_results")
    with pytest.raises(TaskError, match="loglikelihood_rolling"):
        build_tasks([rolling])
    with pytest.raises(ConfigError, match="unknown decoding setting"):
        DLLM("tiny", treshold=0.5)
    with pytest.raises(ConfigError, match="multiple"):
        DLLM("tiny", gen_length=30, block_length=8)


class AnswerKeyLM(lm_eval.api.model.LM):
    """Answers every request from its doc: the gold GSM8K solution, or one whose final number is off by one."""

    def __init__(self, perturb: bool):
        super().__init__()
        self.perturb = perturb

    def generate_until(self, requests, disable_tqdm=False):
        answers = []
        for request in requests:
            solution, final = request.doc["answer"].rsplit("#### ", 1)
            number = int(final.replace(",", ""))
            answers.append(f"{solution}#### {number + 1 if self.perturb else number}")
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
@pytest.mark.parametrize("perturb, expected", [(False, 1.0), (True, 0.0)])
def test_gsm8k_scorer_on_gold_and_perturbed_answers(perturb, expected):
    tasks = build_tasks(["gsm8k"], DATA, num_fewshot=0)
    results = lm_eval.simple_evaluate(model=AnswerKeyLM(perturb), tasks=list(tasks.values()), limit=60,
                                      task_manager=TaskManager(include_defaults=False))
    scores = results["results"]["gsm8k"]
    assert scores["exact_match,strict-match"] == expected and scores["exact_match,flexible-extract"] == expected


def cli_output(folder) -> tuple[dict, list[dict]]:
    """The results and the first task's samples lm-eval's CLI wrote under `--output_path folder`."""
    results = json.loads(next(folder.rglob("results_*.json")).read_text())
    lines = next(folder.rglob("samples_*.jsonl")).read_text().splitlines()
    return results, [json.loads(line) for line in lines]


def test_dllm_lm_eval_command_is_lm_evals_cli_with_speed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pytest"])  # lm-eval's parser reads (and edits) sys.argv
    dllm_lm_eval(["--model", "dllm", "--model_args", "model=tiny,strategy=threshold,threshold=0.9,warmup=0",
                  "--tasks", "arith", "--device", "cpu", "--limit", "4", "--output_path", str(tmp_path),
                  "--log_samples"])
    results, samples = cli_output(tmp_path)
    arith = results["results"]["arith"]
    assert arith["acc,none"] >= 0.5  # the embedded default solves most arith problems at tau 0.9
    assert arith["nfe,none"] < 32 and arith["tpf,none"] > 1  # threshold decoding: several tokens per forward
    assert arith["tokens_per_second,none"] > 0 and arith["latency_mean,none"] > 0
    assert results["speed"]["arith"]["samples"] == 4 and results["speed_protocol"]["device"] == "cpu"
    assert len(samples) == 4
    for sample in samples:
        assert all(key in sample for key in SPEED_KEYS)
        assert sample["tpf"] == pytest.approx(sample["tokens"] / sample["nfe"])
    assert "tokens_per_second" in capsys.readouterr().out  # lm-eval's printed table lists the speed rows


def test_yaml_tasks_are_the_python_tasks(lm):
    """Through `--include_path`'s folder: the same documents, prompts, targets, outputs and scores."""
    names = ["perm", "code"]  # where the embedded default gets some wrong at tau 0.5
    lm = DLLM(lm.model, block_length=8, batch_size=8, warmup=0, strategy="threshold", threshold=0.5)
    runs = [lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=6, log_samples=True, task_manager=manager)
            for tasks, manager in ((names, TaskManager(include_path=str(TASK_YAML), include_defaults=False)),
                                   ([task_config(n) for n in names], TaskManager(include_defaults=False)))]
    from_yaml, from_python = runs
    for name in names:
        assert from_yaml["results"][name]["acc,none"] == from_python["results"][name]["acc,none"]
        for ours, theirs in zip(from_yaml["samples"][name], from_python["samples"][name], strict=True):
            for key in ("doc", "arguments", "target", "filtered_resps", "acc", "nfe"):
                assert ours[key] == theirs[key], key
    assert 0 < sum(s["acc"] for s in from_yaml["samples"]["perm"] + from_yaml["samples"]["code"]) < 12


def test_plain_lm_eval_runs_the_yaml_tasks_from_any_folder(tmp_path):
    """Plain `lm_eval --include_path` (another model, another working directory) finds the tasks and data."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}  # the harness importable, not the CWD
    subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "dummy", "--tasks", "facts",
                    "--include_path", str(TASK_YAML), "--limit", "3", "--output_path", str(tmp_path / "out"),
                    "--log_samples"], cwd=tmp_path, env=env, check=True, capture_output=True)
    results, samples = cli_output(tmp_path / "out")
    assert results["results"]["facts"]["acc,none"] == 0.0  # the dummy model answers "lol"
    python_task = build_tasks(["facts"])["facts"]
    docs = list(python_task.test_docs())[:3]
    assert [s["doc"] for s in samples] == docs
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in samples] == [python_task.doc_to_text(d) for d in docs]
    assert [s["target"] for s in samples] == [python_task.doc_to_target(d) for d in docs]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without CUDA")
def test_cuda_without_cuda_runs_on_the_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="harness.lmeval.model"):
        lm = DLLM("tiny", device="cuda:0", warmup=0)  # lm-eval's CLI default
    assert lm.device.type == "cpu"
    assert "device=cuda:0: CUDA is not available, running on the CPU" in caplog.text


def test_bad_model_arg_is_one_line_before_weights_load(monkeypatch, no_model_load):
    monkeypatch.setattr(sys, "argv", ["pytest"])
    with pytest.raises(SystemExit, match=r"^error: unknown decoding setting\(s\) \['treshold'\] for strategy "
                                         r"'threshold'; its knobs: \['threshold'\]"):
        dllm_lm_eval(["--model", "dllm", "--model_args", "model=tiny,strategy=threshold,treshold=0.9",
                      "--tasks", "arith", "--device", "cpu"])


def test_model_args_take_the_declared_types():
    # lm-eval reads "none" as None and "1" as 1; the decoding fields say what they are
    config, fixed = decode_config(simple_parse_args_string("strategy=threshold,threshold=1,eotp=1,cache=none,"
                                                           "block_length=8,temperature=0"))
    assert (config.cache, config.eotp, config.block_length, fixed) == ("none", True, 8, None)
    assert config.policy.threshold == 1.0 and type(config.policy.threshold) is float
    assert type(config.temperature) is float
    with pytest.raises(ConfigError, match="threshold must be"):
        decode_config({"strategy": "threshold", "threshold": "high"})


@pytest.mark.skipif(not FIXTURE.exists(), reason="../shared/fixtures not present")
def test_model_arg_takes_a_folder():
    lm = DLLM.create_from_arg_string(f"model={FIXTURE},block_length=8,warmup=0", {"device": "cpu"})
    assert lm.model.max_length == 128 and lm.decoding.block_length == 8
