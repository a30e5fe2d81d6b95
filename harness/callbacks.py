"""Hydra callbacks: a sweep name that would write outside the results folder is refused before Hydra creates
any folder; each finished job logs the sweep's progress with an ETA; a finished sweep analyses itself (Pareto
plots and tables.md in its `analysis/` folder)."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from .progress import progress_line

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


class SweepProgress(Callback):
    """`[12/96] 3 min 10 s elapsed, ETA 21 min` after each job of a multirun. Finished jobs are counted as
    files in a folder made when the sweep starts, so that jobs run in other processes (joblib) count too: this
    object, with its start time and folder, travels to them with Hydra's context."""

    def on_multirun_start(self, config, **kwargs) -> None:
        self.total, self.started = planned_jobs(config), time.time()
        self.finished = tempfile.mkdtemp(prefix="dllm-sweep-progress-")

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not getattr(self, "finished", None):  # a single run
            return
        Path(self.finished, str(config.hydra.job.num)).touch()
        done = sum(1 for _ in Path(self.finished).iterdir())
        log.info(progress_line(done, self.total, time.time() - self.started))

    def on_multirun_end(self, config, **kwargs) -> None:
        shutil.rmtree(self.finished, ignore_errors=True)


def planned_jobs(config) -> int | None:
    """The number of jobs the sweeper launches (both sweepers cross `params` with the command line; ours adds
    `grids`); None where it cannot tell without Hydra's config loader (a glob over config options)."""
    from hydra_plugins.dllm_harness.grids_sweeper import GridsSweeper
    sweeper = config.hydra.sweeper
    grids = GridsSweeper(None, dict(sweeper.get("params") or {}), sweeper.get("grids"))
    grids.hydra_context = SimpleNamespace(config_loader=None)
    try:
        return len(grids.jobs(list(config.hydra.overrides.task)))
    except HydraException:  # glob() needs the config loader
        return None


class AnalyseSweep(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        if not config.get("analyse", True):
            return
        try:
            from analysis.report import log_to_wandb, report_sweep
            written = report_sweep(Path(config.hydra.sweep.dir))
            out = written["tables_md"].parent
            log.info(f"analysis written to {out}: {len(written['paths'])} files")
            tracking = OmegaConf.to_container(config.tracking, resolve=True, enum_to_str=True)
            if tracking["mode"] != "disabled":  # Pareto plots and tables beside the sweep's runs
                project = "/".join(filter(None, (tracking["entity"], tracking["project"])))
                log_to_wandb(written, project, config.sweep, tracking["mode"], out)
        except Exception as err:  # the sweep's records matter more than its plots
            log.warning(f"sweep analysis failed ({type(err).__name__}: {err}); run python -m analysis.report")
