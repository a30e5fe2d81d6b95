"""lm-eval task configs the harness builds: the embedded default's synthetic tasks (read from their lm-eval
YAML in `yaml_tasks/`, which `--include_path` users run) and four real benchmarks read from local copies
(`data_dir` laid out like `../shared/data/`).

GSM8K, HumanEval and MBPP start from lm-eval's own YAML (prompt, stop strings, few-shot settings), loaded
through its YAML loader without importing their helper modules (HumanEval/MBPP's need the hub for HF
`code_eval`; MATH's needs lm-eval[math], whose antlr pin breaks Hydra); the harness swaps in local data and
its own scorers (`harness.lmeval.scoring`). Everything is checked here, before any model is loaded.
"""
from __future__ import annotations

import ast
import gzip
import json
import os
from pathlib import Path

import lm_eval

from ..tasks.synthetic import TASKS as SYNTHETIC, write_splits
from . import scoring

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
TASK_YAML = Path(__file__).parent / "yaml_tasks"  # the synthetic tasks as lm-eval YAML (`--include_path`)
REAL_TASKS = ("gsm8k", "math", "humaneval", "mbpp")
TASK_NAMES = (*SYNTHETIC, *REAL_TASKS)
CODE_TASKS = ("humaneval", "mbpp")
SUPPORTED_OUTPUTS = ("generate_until", "loglikelihood", "multiple_choice")
DATA_FILES = {"gsm8k": ("gsm8k/test.jsonl", "gsm8k/train.jsonl"), "math": ("math/test.jsonl",),
              "humaneval": ("humaneval/HumanEval.jsonl.gz",), "mbpp": ("mbpp/mbpp.jsonl",)}
# What each file's rows must hold to be scored: a row without its answer or tests would score 0, not fail.
ROW_FIELDS = {"gsm8k/test.jsonl": ("question", "answer"), "gsm8k/train.jsonl": ("question", "answer"),
              "math/test.jsonl": ("problem", "solution"),
              "humaneval/HumanEval.jsonl.gz": ("task_id", "prompt", "test", "entry_point"),
              "mbpp/mbpp.jsonl": ("task_id", "text", "code", "test_list")}
SYNTHETIC_FIELDS = ("prompt", "answer", "meta")
MBPP_TEST_IDS, MBPP_FEWSHOT_IDS = range(11, 511), (2, 3, 4)  # the standard split; lm-eval's 3 shots


class TaskError(ValueError):
    """A task that cannot run: unknown, missing data, or needing an opt-in. One line, before any compute."""


def synthetic_data_dir() -> Path:
    """Where the synthetic splits live: $DLLM_HARNESS_DATA or ~/.cache/dllm-harness; written on first use
    (deterministic, seconds)."""
    root = Path(os.environ.get("DLLM_HARNESS_DATA", Path.home() / ".cache" / "dllm-harness")) / "synthetic"
    if not all((root / t / "test.jsonl").exists() for t in SYNTHETIC):
        write_splits(root)
    return root


def _lm_eval_yaml(relative: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml
    config = load_yaml(LM_EVAL_TASKS / relative, resolve_func=False)
    config.pop("tag", None)
    return config


def _json_dataset(files: dict[str, Path]) -> dict:
    return {"dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}}}


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_rows(path: Path, fields: tuple[str, ...]) -> None:
    """Every row of a JSONL file parses and holds `fields` (a MATH solution its \\boxed{} answer); the first
    that does not fails the task, naming the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            missing = [k for k in fields if not isinstance(row, dict) or row.get(k) in (None, "", [], {})]
            if not missing and "solution" in fields and not scoring.last_boxed(row["solution"]):
                missing = ["\\boxed{} answer in its solution"]
            if missing:
                raise TaskError(f"{path}:{number}: row has no {missing[0]} (it could only score 0)")


def _synthetic_files(name: str) -> dict[str, Path]:
    folder = synthetic_data_dir() / name
    files = {split: folder / f"{split}.jsonl" for split in ("train", "validation", "test")}
    for path in files.values():
        check_rows(path, SYNTHETIC_FIELDS)
    return files


def synthetic_dataset(synthetic_task: str, **_):
    """The YAML tasks' data (lm-eval's `custom_dataset`, called with the task's metadata too): the JSONL splits
    the Python configs read, loaded the way lm-eval loads those."""
    import datasets
    files = _synthetic_files(synthetic_task)
    return datasets.load_dataset("json", data_files={split: str(path) for split, path in files.items()})


def score_synthetic(doc: dict, results: list[str]) -> dict:
    """The synthetic tasks' `process_results`: the task's own checker on the answer."""
    return {"acc": float(SYNTHETIC[doc["task"]].score(doc, results[0].strip()))}


def _synthetic(name: str) -> dict:
    """The task's YAML (prompt, target, scorer, generation settings; what `--include_path` users run) with
    its splits as data files, so that a cell's data fingerprint covers them."""
    from lm_eval.tasks._yaml_loader import load_yaml
    config = load_yaml(TASK_YAML / f"{name}.yaml")
    del config["custom_dataset"], config["tag"]
    return config | _json_dataset(_synthetic_files(name))


def _gsm8k(data_dir: Path | None) -> dict:
    config = _lm_eval_yaml("gsm8k/gsm8k.yaml")  # prompt, 5-shot, strict + flexible filters, exact_match
    if data_dir:
        config |= _json_dataset({"train": data_dir / "gsm8k/train.jsonl", "test": data_dir / "gsm8k/test.jsonl"})
    return config


def _minerva_fewshot() -> list[dict]:
    """Minerva's four MATH exemplars, read from lm-eval's minerva_math task (its module cannot be imported
    without lm-eval[math], so the literal list it returns is parsed)."""
    tree = ast.parse((LM_EVAL_TASKS / "minerva_math" / "utils.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    returned = next(n for n in ast.walk(function) if isinstance(n, ast.Return))
    return ast.literal_eval(returned.value)


def _math(data_dir: Path | None) -> dict:
    if not data_dir:
        raise TaskError("math reads Hendrycks MATH from a local copy: give data_dir (lm-eval's minerva_math "
                        "cannot be loaded next to Hydra)")

    def with_answer(dataset):
        return dataset.map(lambda doc: {"answer": scoring.normalize_math_answer(scoring.last_boxed(doc["solution"]) or "")})

    return {
        "task": "math", "output_type": "generate_until", **_json_dataset({"test": data_dir / "math/test.jsonl"}),
        "test_split": "test", "process_docs": with_answer,
        "doc_to_text": "Problem:\n{{problem}}\n\nSolution:",
        "doc_to_target": "{{answer if few_shot is undefined else solution}}",
        "process_results": scoring.process_math_results,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "generation_kwargs": {"until": ["Problem:"], "do_sample": False, "temperature": 0},
        "num_fewshot": 4, "fewshot_config": {"sampler": "first_n", "samples": _minerva_fewshot},
        "metadata": {"version": 1.0},
    }


def _code_scoring(program) -> dict:
    def process_results(doc, results):
        passed, _ = scoring.run_program(program(doc, results[0]))
        return {"pass@1": float(passed)}
    return {"process_results": process_results, "filter_list": None,
            "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}]}


def _humaneval(data_dir: Path | None) -> dict:
    config = _lm_eval_yaml("humaneval/humaneval.yaml") | _code_scoring(scoring.humaneval_program)
    if data_dir:
        config |= _json_dataset({"test": data_dir / "humaneval/HumanEval.jsonl.gz"})
    return config


def _mbpp(data_dir: Path | None) -> dict:
    config = _lm_eval_yaml("mbpp/mbpp.yaml") | _code_scoring(scoring.mbpp_program)
    if data_dir:
        path = data_dir / "mbpp/mbpp.jsonl"
        config |= _json_dataset({"test": path})
        config["process_docs"] = lambda dataset: dataset.filter(lambda doc: doc["task_id"] in MBPP_TEST_IDS)
        shots = {d["task_id"]: d for d in _read_jsonl(path) if d["task_id"] in MBPP_FEWSHOT_IDS}
        config["fewshot_config"] = {"sampler": "first_n",
                                    "samples": lambda: [shots[i] | {"is_fewshot": True} for i in MBPP_FEWSHOT_IDS]}
    else:  # the same three shots from the hub's prompt split
        def hub_shots():
            import datasets
            prompt = datasets.load_dataset(config["dataset_path"], config["dataset_name"], split="prompt")
            by_id = {d["task_id"]: d for d in prompt}
            return [by_id[i] | {"is_fewshot": True} for i in MBPP_FEWSHOT_IDS]
        config["fewshot_config"] = {"sampler": "first_n", "samples": hub_shots}
    return config


BUILDERS = {"gsm8k": _gsm8k, "math": _math, "humaneval": _humaneval, "mbpp": _mbpp}


def task_config(name: str, data_dir: str | Path | None = None, num_fewshot: int | None = None) -> dict:
    """The lm-eval config dict of one harness task (checked: data files present)."""
    if name in SYNTHETIC:
        config = _synthetic(name)
    else:
        data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        for relative in DATA_FILES[name] if data_dir else ():
            if not (data_dir / relative).is_file():
                raise TaskError(f"task {name!r}: data file not found: {data_dir / relative}")
            check_rows(data_dir / relative, ROW_FIELDS[relative])
        config = BUILDERS[name](data_dir)
    if num_fewshot is not None:
        config["num_fewshot"] = num_fewshot
    return config


def check_unsafe_code(names, confirm_run_unsafe_code: bool) -> None:
    """Code tasks run generated programs; both lm-eval's flag and HF_ALLOW_CODE_EVAL must opt in."""
    code = [n for n in names if n in CODE_TASKS]
    if code and not confirm_run_unsafe_code:
        raise TaskError(f"{', '.join(code)} run generated code: pass confirm_run_unsafe_code=True "
                        f"(harness: unsafe_code=true) and set HF_ALLOW_CODE_EVAL=1")
    if code:
        try:
            scoring.require_code_opt_in()
        except scoring.CodeExecutionNotAllowed as e:
            raise TaskError(str(e)) from None


def check_metric(task, metric: str) -> None:
    """`metric` ("name,filter") must be one the lm-eval task computes: found now, not after the evaluation."""
    declared = [f"{name},{f.name}" for f in task._filters for name in task.aggregation()]
    if metric not in declared:
        raise TaskError(f"task.metric={metric!r}: task {task.config.task!r} reports {', '.join(declared)}")


def build_tasks(names, data_dir=None, num_fewshot: int | None = None,
                confirm_run_unsafe_code: bool = False) -> dict:
    """lm-eval Task objects, every check done before any model exists. Harness task names are built here;
    a dict is taken as an lm-eval task config; any other name is looked up in lm-eval's own task index
    (which takes a few seconds to build)."""
    from lm_eval.tasks import TaskManager, get_task_dict
    names = [names] if isinstance(names, (str, dict)) else list(names)
    specs: list = [task_config(n, data_dir, num_fewshot) if n in TASK_NAMES else n for n in names]
    names = [n["task"] if isinstance(n, dict) else n for n in names]
    manager = TaskManager(include_defaults=False)
    if any(isinstance(s, str) for s in specs):
        manager = TaskManager()
        unknown = [s for s in specs if isinstance(s, str) and s not in manager.all_tasks]
        if unknown:
            raise TaskError(f"unknown task {unknown[0]!r}; harness tasks: {', '.join(TASK_NAMES)}, "
                            f"or any lm-eval task name")
    check_unsafe_code(names, confirm_run_unsafe_code)
    tasks = get_task_dict(specs, manager)
    for name, task in tasks.items():
        if task.OUTPUT_TYPE not in SUPPORTED_OUTPUTS:
            raise TaskError(f"task {name!r} needs {task.OUTPUT_TYPE}, which a diffusion LM does not serve "
                            f"(supported: {', '.join(SUPPORTED_OUTPUTS)})")
    return tasks
