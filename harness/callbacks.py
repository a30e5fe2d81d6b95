"""Hydra callbacks: a sweep name that would write outside the results folder is refused before Hydra creates
any folder; a finished sweep analyses itself (Pareto plots and tables.md in its folder)."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class CheckSweep(Callback):
    """`sweep` names a folder inside the results root (`store` in conf/config.yaml): never an absolute path or
    one that climbs out with `..`. SystemExit, because Hydra turns a callback's exceptions into warnings."""

    def on_run_start(self, config, **kwargs) -> None:
        name = str(config.sweep)
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise SystemExit(f"error: sweep={name!r} must be a folder name inside the results root, "
                             f"not a path out of it (to write elsewhere, set store=...)")

    on_multirun_start = on_run_start


class AnalyseSweep(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        if not config.get("analyse", True):
            return
        try:
            from analysis.report import log_to_wandb, report_sweep
            folder = Path(config.hydra.sweep.dir)
            written = report_sweep(folder)
            log.info(f"analysis written to {folder}: {len(written['paths'])} files")
            tracking = OmegaConf.to_container(config.tracking, resolve=True, enum_to_str=True)
            if tracking["mode"] != "disabled":  # Pareto plots and tables beside the sweep's runs
                project = "/".join(filter(None, (tracking["entity"], tracking["project"])))
                log_to_wandb(written, project, config.sweep, tracking["mode"], folder)
        except Exception as err:  # the sweep's records matter more than its plots
            log.warning(f"sweep analysis failed ({type(err).__name__}: {err}); run python -m analysis.report")
