"""`python -m harness` = `dllm-harness`: the Hydra application (see harness/cli.py)."""
from .cli import main

main()
