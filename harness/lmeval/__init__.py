"""lm-evaluation-harness integration: the `dllm` model (per-request speed statistics, merged into every
result), the harness's task configs (synthetic tasks, also as lm-eval YAML in `yaml_tasks/`; GSM8K, MATH,
HumanEval, MBPP from local copies) and the `dllm-lm-eval` command (`cli.py`)."""
from __future__ import annotations

from .model import DLLM, counted_tokens, cut_at_stop
from .tasks import TASK_NAMES, TaskError, build_tasks, task_config


def evaluate(model, tasks, *, data_dir=None, limit: int | float | None = None, num_fewshot: int | None = None,
             confirm_run_unsafe_code: bool = False, log_samples: bool = True, **dllm_kwargs) -> dict:
    """Run lm-eval on harness tasks and return its results (speed merged in by the model, `DLLM.attach_speed`).
    Tasks and settings are checked before `model` (a name, a path, a loaded model or a DLLM) is loaded."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    task_dict = build_tasks(tasks, data_dir, num_fewshot, confirm_run_unsafe_code)
    lm = model if isinstance(model, DLLM) else DLLM(model, **dllm_kwargs)
    return lm_eval.simple_evaluate(model=lm, tasks=list(task_dict.values()), limit=limit, log_samples=log_samples,
                                   confirm_run_unsafe_code=confirm_run_unsafe_code,
                                   task_manager=TaskManager(include_defaults=False))


__all__ = ["DLLM", "TASK_NAMES", "TaskError", "build_tasks", "counted_tokens", "cut_at_stop", "evaluate",
           "task_config"]
