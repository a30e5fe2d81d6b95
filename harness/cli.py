"""`dllm-harness` / `python -m harness`: the Hydra application (the cell's work: harness/run.py).

This module stays light so that `--help`, `--hydra-help` and TAB completion (`-sc`) answer without importing
torch, lm-eval or transformers: those load with harness.run once a job runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import schema

PACKAGE = Path(__file__).resolve().parent
# Installed, the configs travel inside the package (setup.py maps conf/ to harness/conf); in a source checkout
# (an editable install too) they are conf/ at the repository root.
CONF = PACKAGE / "conf" if (PACKAGE / "conf").is_dir() else PACKAGE.parent / "conf"
LISTING_FLAGS = ("-h", "--help", "--hydra-help", "-sc", "--shell-completion")  # print options, run no job


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def app(cfg: DictConfig) -> float | None:
    from .run import run_job
    return run_job(cfg)


def main() -> None:
    listing = any(arg.split("=")[0] in LISTING_FLAGS for arg in sys.argv[1:])
    schema.register(listing=listing)
    app()
