"""python -m harness.lmeval ... : the `dllm-lm-eval` command (lm-eval's CLI with the harness registered)."""
from .cli import main

main()
