"""Hydra callbacks: a finished sweep analyses itself (Pareto plots and tables.md in its folder)."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class AnalyseSweep(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        if not config.get("analyse", True):
            return
        try:
            from analysis.report import report_sweep
            written = report_sweep(Path(config.hydra.sweep.dir))
            log.info(f"analysis written to {config.hydra.sweep.dir}: {len(written)} files")
        except Exception as err:  # the sweep's records matter more than its plots
            log.warning(f"sweep analysis failed ({type(err).__name__}: {err}); run python -m analysis.report")
