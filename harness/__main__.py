"""`python -m harness` = `dllm-harness`: the Hydra application (see harness/run.py)."""
from .run import main

main()
