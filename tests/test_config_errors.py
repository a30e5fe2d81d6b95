"""Invalid settings and broken files fail with one line naming the setting or file, before any weight is read
(or when Hydra composes the config); broken models and data fail the cell instead of scoring 0."""
import gzip
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

import harness.run
from harness.decoding import ConfigError, DecodeConfig, generate
from harness.decoding.engine import NonFiniteLogits
from harness.learn2pd.filter import Filter, FilterFileError, load_filter, save_filter
from harness.lmeval.tasks import TaskError, task_config
from harness.models import load_model, save_llada
from harness.models.metered import Metered
from harness.run import cell_settings, run_cell

from .conftest import DATA, FIXTURE, REPO
from .test_sweep import composed


@pytest.mark.parametrize("settings, message", [
    (dict(gen_length=30, block_length=8), "multiple of block_length"),
    (dict(gen_length=32, block_length=8, steps=6), "multiple of the number of blocks"),
    (dict(strategy="threshold", threshold=0.0), r"threshold must be in \(0, 1\]"),
    (dict(strategy="threshold", threshold=1.5), r"threshold must be in \(0, 1\]"),
    (dict(strategy="greedy"), "unknown strategy 'greedy'"),
    (dict(cache="triple"), "unknown cache 'triple'"),
    (dict(remasking="lowest"), "decoding.remasking must be low_confidence or random"),
    (dict(temperature=float("nan")), "decoding.temperature must be a finite number"),
    (dict(strategy="factor", factor=float("inf")), "decoding.factor must be a finite number"),
])
def test_bad_config_values_fail_at_construction(settings, message):
    with pytest.raises(ConfigError, match=message) as err:
        DecodeConfig.create(**settings)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case, message", [
    ("oracle without reference", "needs reference="),
    ("reference of the wrong shape", "reference has shape"),
    ("too long", "exceeds the model's max length 128"),
    ("mask of the wrong shape", "attention_mask has shape"),
    ("bool ids", "must be int64 token ids, got torch.bool"),
    ("int32 ids", "must be int64 token ids, got torch.int32"),
    ("empty batch", "empty batch"),
    ("mask token in a prompt", r"prompt 1 holds the mask token \(310\) at position 4"),
])
def test_bad_inputs_fail_before_any_forward(tiny, case, message):
    model = Metered(tiny)
    ids = torch.randint(0, 250, (2, 10))
    kwargs, config = {}, DecodeConfig(gen_length=32, block_length=8)
    if case == "oracle without reference":
        config = DecodeConfig.create(gen_length=32, block_length=8, strategy="oracle")
    elif case == "reference of the wrong shape":
        config = DecodeConfig.create(gen_length=32, block_length=8, strategy="oracle")
        kwargs["reference"] = torch.zeros(2, 16, dtype=torch.long)
    elif case == "too long":
        ids = torch.randint(0, 250, (2, 100))
    elif case == "mask of the wrong shape":
        kwargs["attention_mask"] = torch.ones(2, 9, dtype=torch.long)
    elif case == "bool ids":
        ids = ids > 100
    elif case == "int32 ids":
        ids = ids.int()
    elif case == "empty batch":
        ids = ids[:0]
    elif case == "mask token in a prompt":
        ids[1, 4] = tiny.mask_token_id
    with pytest.raises(ConfigError, match=message) as err:
        generate(model, ids, config, **kwargs)
    assert model.calls == 0 and "\n" not in str(err.value)


def test_a_mask_id_in_left_padding_is_not_a_prompt_token(tiny):
    ids = torch.randint(0, 250, (2, 10))
    ids[0, :3] = tiny.mask_token_id  # padding, hidden by the attention mask
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    out = generate(tiny, ids, DecodeConfig(gen_length=8, block_length=8), attention_mask=mask)
    assert (out.tokens != tiny.mask_token_id).all()


# ---------------------------------------------------------------- the engine: no silent wrong results
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("strategy", ["baseline", "threshold"])
def test_non_finite_logits_stop_the_decode(value, strategy):
    model = load_model(FIXTURE)
    with torch.no_grad():
        model.model.transformer.ff_out.weight[7, 3] = value  # one head weight: every logit of token 7
    with pytest.raises(NonFiniteLogits, match="NaN or inf logits in block 0") as err:
        generate(model, torch.randint(0, 250, (2, 10)), DecodeConfig(gen_length=16, block_length=8,
                                                                     strategy=strategy))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- cells: checks before the model loads
def run_failing_cell(tmp_path, *overrides) -> str:
    """Run one cell through the harness (the composed config, check_cell, the store) and return its recorded
    one-line error; the cell must have failed before any model was loaded."""
    harness.run._LOADED.clear()
    settings = cell_settings(composed(f"store={tmp_path / 'store'}", "tracking=disabled", "task.limit=2",
                                      "warmup=0", *overrides), "cpu")
    record = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert record["status"] == "failed" and "\n" not in record["error"]
    assert harness.run._LOADED == {}, "the model was loaded before the error"
    return record["error"]


@pytest.mark.parametrize("overrides, message", [
    (["batch_size=0"], "batch_size=0: must be an integer >= 1"),
    (["batch_size=-1"], "batch_size=-1: must be an integer >= 1"),
    (["warmup=-1"], "warmup=-1: must be an integer >= 0"),
    (["task.limit=0"], "task.limit=0.0: must be a number of problems >= 1"),
    (["task.limit=-5"], "task.limit=-5.0: must be a number of problems >= 1"),
    (["task.num_fewshot=-1"], "task.num_fewshot=-1: must be an integer >= 0"),
    (["task.metric='accuracy,none'"], "task.metric='accuracy,none': task 'arith' reports acc,none"),
    (["task=gsm8k", f"task.data_dir={DATA}", "task.metric='exact_match,none'"],
     "reports exact_match,strict-match, exact_match,flexible-extract"),
    (["decoding.gen_length=100000"], r"gen_length 100000 \(decoding.gen_length\) leaves no room for a prompt in "
                                     r"the model's max length 128"),
    (["task=gsm8k", f"task.data_dir={DATA}"], r"gen_length 256 \(the task's max_gen_toks 256\) leaves no room"),
    (["decoding.steps=3"], r"steps \(3\) must be a multiple of the number of blocks \(4 .*max_gen_toks 32"),
    (["decoding=learned", "decoding.block_length=16"], "filter tiny was trained for block_length 8, not "
                                                       "decoding.block_length=16"),
    (["decoding=threshold", "decoding.temperature=nan"], "decoding.temperature must be a finite number"),
    (["model=llada_8b_instruct"], "model.path is not set"),
    (["model.path=/no/such/model"], "model.path=/no/such/model: no such folder"),
])
def test_bad_settings_fail_the_cell_before_the_model_loads(tmp_path, overrides, message):
    assert re.search(message, run_failing_cell(tmp_path, *overrides))


def model_copy(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(FIXTURE, folder)
    for f in folder.iterdir():
        f.chmod(0o644)  # the shared fixture is read-only
    return folder


def truncate(file, keep=0.5):
    data = file.read_bytes()
    file.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.parametrize("damage, message", [
    ("corrupt config.json", "config.json: not readable JSON"),
    ("config.json is a list", "config.json: expected a JSON object, got list"),
    ("truncated safetensors", r"model.safetensors: not a readable safetensors file \(.*incomplete metadata"),
    ("missing shard", "model-00002-of-00002.safetensors not found \\(listed in model.safetensors.index.json\\)"),
])
def test_a_damaged_model_folder_is_named_before_any_weight_is_read(tmp_path, damage, message):
    folder = model_copy(tmp_path)
    if damage == "corrupt config.json":
        (folder / "config.json").write_text('{"model_type": "llada", "d_model": ')
    elif damage == "config.json is a list":
        (folder / "config.json").write_text("[]")
    elif damage == "truncated safetensors":
        truncate(folder / "model.safetensors")
    elif damage == "missing shard":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
        index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    error = run_failing_cell(tmp_path, f"model.path={folder}")
    assert re.search(message, error) and str(folder) in error
    with pytest.raises((ValueError, FileNotFoundError), match=message):  # loading names the file too
        load_model(folder)


def pickled(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))  # torch.load expects 2 (no warning)
    return path


@pytest.mark.parametrize("damage, message", [
    ("truncated", "not a readable safetensors file"),
    ("a pickle named .safetensors", "not a readable safetensors file"),
    ("a plain pickle", "not a readable torch state dict"),
    ("a pickled object", "not a readable torch state dict"),
    ("wrong keys", r"no linear1.weight \.\.\. linear<depth>.weight matrices \(keys: \['fc.bias', 'fc.weight'\]\)"),
    ("mis-shaped tensor", r"mis-shaped \['linear1.bias'\]"),
    ("no metadata", "no 'learn2pd_filter' metadata"),
])
def test_a_broken_filter_file_is_one_line_naming_it(tmp_path, damage, message):
    good = save_filter(Filter(block_length=8, hidden=16), tmp_path / "good.safetensors")
    state = Filter(block_length=8, hidden=16).state_dict()
    if damage == "truncated":
        path = tmp_path / "filter.safetensors"
        shutil.copy(good, path)
        truncate(path)
    elif damage == "a pickle named .safetensors":
        path = tmp_path / "filter.safetensors"
        torch.save(state, path)
    elif damage == "a plain pickle":
        path = pickled(tmp_path / "filter.pth", {k: v.tolist() for k, v in state.items()})
    elif damage == "a pickled object":
        path = pickled(tmp_path / "filter.pth", Filter(block_length=8))
    elif damage == "wrong keys":
        path = tmp_path / "filter.pth"
        torch.save({"fc.weight": torch.zeros(8, 8), "fc.bias": torch.zeros(8)}, path)
    elif damage == "mis-shaped tensor":
        path = tmp_path / "filter.pth"
        torch.save({**state, "linear1.bias": torch.zeros(3)}, path)
    elif damage == "no metadata":
        from safetensors.torch import save_file
        path = tmp_path / "filter.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(FilterFileError, match=message) as err:
        load_filter(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    error = run_failing_cell(tmp_path, "decoding=learned", f"decoding.filter_path={path}")
    assert str(path) in error and re.search(message, error)


def test_model_dtype_is_checked_at_compose_time():
    with pytest.raises((HydraException, OmegaConfBaseException), match="model.dtype"):
        composed("model.dtype=foo")
    assert composed("model.dtype=bfloat16").model.dtype.name == "bfloat16"


# ---------------------------------------------------------------- data rows
def write_jsonl(path, rows, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def first_rows(relative, n=4):
    opener = gzip.open if relative.endswith(".gz") else open
    with opener(DATA / relative, "rt") as f:
        return [json.loads(next(f)) for _ in range(n)]


@pytest.mark.parametrize("task, relative, field", [
    ("gsm8k", "gsm8k/test.jsonl", "answer"),
    ("gsm8k", "gsm8k/train.jsonl", "question"),
    ("math", "math/test.jsonl", "solution"),
    ("humaneval", "humaneval/HumanEval.jsonl.gz", "test"),
    ("mbpp", "mbpp/mbpp.jsonl", "test_list"),
])
def test_a_data_row_without_its_answer_fails_naming_file_and_line(tmp_path, task, relative, field):
    from harness.lmeval.tasks import DATA_FILES
    for other in DATA_FILES[task]:
        write_jsonl(tmp_path / other, first_rows(other), other.endswith(".gz"))
    task_config(task, tmp_path)  # the real rows pass
    rows = first_rows(relative)
    rows[2][field] = [] if field == "test_list" else ""
    write_jsonl(tmp_path / relative, rows, relative.endswith(".gz"))
    with pytest.raises(TaskError, match=f"{tmp_path / relative}:3: row has no {field}"):
        task_config(task, tmp_path)
    del rows[2][field]
    write_jsonl(tmp_path / relative, rows, relative.endswith(".gz"))
    with pytest.raises(TaskError, match=f"{tmp_path / relative}:3: row has no {field}"):
        task_config(task, tmp_path)


def test_a_math_solution_without_a_boxed_answer_or_a_broken_line_fails(tmp_path):
    rows = first_rows("math/test.jsonl")
    rows[1]["solution"] = "The answer is 4."
    write_jsonl(tmp_path / "math/test.jsonl", rows)
    with pytest.raises(TaskError, match=r"test.jsonl:2: row has no \\boxed\{\} answer"):
        task_config("math", tmp_path)
    (tmp_path / "math/test.jsonl").write_text('{"problem": "1+1", "solution": "\\\\boxed{2}"}\n{"problem": \n')
    with pytest.raises(TaskError, match="test.jsonl:2: not valid JSON"):
        task_config("math", tmp_path)


def test_a_gsm8k_row_without_its_answer_fails_the_cell(tmp_path):
    rows = first_rows("gsm8k/test.jsonl")
    del rows[1]["answer"]
    write_jsonl(tmp_path / "data/gsm8k/test.jsonl", rows)
    write_jsonl(tmp_path / "data/gsm8k/train.jsonl", first_rows("gsm8k/train.jsonl"))
    error = run_failing_cell(tmp_path, "task=gsm8k", f"task.data_dir={tmp_path / 'data'}",
                             "decoding.gen_length=64")
    assert f"{tmp_path / 'data/gsm8k/test.jsonl'}:2: row has no answer" in error


# ---------------------------------------------------------------- a model with NaN weights
def test_a_model_with_nan_weights_fails_the_cell(tmp_path):
    model = load_model("tiny")
    with torch.no_grad():
        model.model.transformer.ff_out.weight.fill_(float("nan"))
    folder = save_llada(model, tmp_path / "nan-model")
    harness.run._LOADED.clear()
    settings = cell_settings(composed(f"store={tmp_path / 'store'}", "tracking=disabled", "task.limit=2",
                                      "warmup=0", f"model.path={folder}"), "cpu")
    record = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    harness.run._LOADED.clear()
    assert record["status"] == "failed" and "NonFiniteLogits" in record["error"] and "metrics" not in record


# ---------------------------------------------------------------- the command line: one line, no traceback
def cli(tmp_path, *args):
    env = {**os.environ, "WANDB_SILENT": "true", "DLLM_RESULTS": str(tmp_path / "results")}
    return subprocess.run([sys.executable, "-m", "harness", *args, "tracking=disabled"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["sweep=../escaped"], "error: sweep='../escaped' must be a folder name inside the results root"),
    (["-m", "sweep=/tmp/elsewhere"], "error: sweep='/tmp/elsewhere' must be a folder name inside the results"),
    (["batch_size=0"], "error: ConfigError: batch_size=0: must be an integer >= 1"),
    (["device=tpu:9"], "error: device=tpu:9: not a torch device"),
    (["device=cuda:99"], r"error: device=cuda:99: torch \S+ sees \d+ CUDA device\(s\)"),
    pytest.param(["device=cuda"], r"error: device=cuda: torch \S+ sees 0 CUDA device\(s\)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_a_single_run_fails_with_one_line(tmp_path, args, message):
    done = cli(tmp_path, *args)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and re.search(message, done.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_a_sweep_records_failed_cells_and_goes_on(tmp_path):
    done = cli(tmp_path, "-m", "batch_size=0,-1", "analyse=false")
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("result.json")]
    assert sorted(r["error"] for r in records) == ["ConfigError: batch_size=-1: must be an integer >= 1",
                                                   "ConfigError: batch_size=0: must be an integer >= 1"]


def test_nan_logits_fail_a_log_likelihood_estimate():
    from harness.lmeval import DLLM
    model = load_model(FIXTURE)
    with torch.no_grad():
        model.model.transformer.ff_out.weight[7, 3] = float("nan")
    with pytest.raises(NonFiniteLogits, match="log-likelihood"):
        DLLM(model, mc_num=4, mc_batch_size=4)._mc_loglikelihood([1, 2, 3], [4, 7, 5])
