"""`dllm-lm-eval`: lm-eval's own command line, every flag as is, with the `dllm` model registered and the
synthetic tasks on the task path (after any `--include_path` of the user's):

    dllm-lm-eval --model dllm --model_args model=tiny,strategy=threshold,threshold=0.9 --tasks arith --device cpu

lm-eval 0.4.13 discovers no plugins (its model registry reads no entry points), so a plain `lm_eval` cannot
know `dllm` unless the harness is imported first; this command does that and hands over to lm-eval's CLI.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    from ..decoding import ConfigError
    from . import model  # noqa: F401  (registers `dllm`)
    from .tasks import TASK_YAML, TaskError

    sys.argv = ["dllm-lm-eval", *(sys.argv[1:] if argv is None else argv)]  # lm-eval's parser reads sys.argv
    setup_logging()
    cli = HarnessCLI()
    args = cli.parse_args()
    if hasattr(args, "include_path"):  # run, ls and validate take one; lm-eval's TaskManager takes a list
        args.include_path = [str(TASK_YAML), *([args.include_path] if args.include_path else [])]
    try:
        cli.execute(args)
    except (ConfigError, TaskError, FileNotFoundError) as err:  # a bad model arg or path: one line
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
