"""dllm-harness's Hydra plugin (Hydra finds plugins only in the `hydra_plugins` namespace package).

A sweeper over a union of grids: `hydra.sweeper.grids` lists override dicts, each crossed with the
shared `params` and the command line on its own. Strategy-specific axes stay with their strategy:

    params: {task: "arith,perm", decoding.eotp: "false,true"}
    grids:
      - {decoding: baseline}
      - {decoding: threshold, decoding.threshold: "0.5,0.7,0.9"}

runs baseline x task x eotp and threshold x τ x task x eotp, never baseline x τ. A command-line override
of a key replaces that key in every grid. Duplicate jobs are run once.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


@dataclass
class GridsSweeperConf:
    _target_: str = "hydra_plugins.dllm_harness.grids_sweeper.GridsSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict[str, str]] = None
    grids: list[Any] = field(default_factory=lambda: [{}])


class GridsSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None, grids=None):
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.grids = [dict(g) for g in grids] if grids else [{}]

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def jobs(self, arguments: list[str]) -> list[list[str]]:
        """Every grid's Cartesian product, in grid order, without duplicates."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs, seen = [], set()
        for grid in self.grids:
            overrides = [f"{k}={v}" for k, v in {**self.params, **grid}.items()] + list(arguments)
            for job in BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)[0]:
                if tuple(job) not in seen:
                    seen.add(tuple(job))
                    jobs.append(job)
        return jobs

    def sweep(self, arguments: list[str]) -> Any:
        jobs = self.jobs(arguments)
        size = self.max_batch_size or len(jobs) or 1
        batches = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(f"{len(jobs)} jobs from {len(self.grids)} grid(s)")
        for batch in batches:  # every job's config composes before the first job runs
            self.validate_batch_is_legal(batch)
        returns, first = [], 0
        for batch in batches:
            results = self.launcher.launch(batch, initial_job_idx=first)
            for r in results:
                _ = r.return_value  # re-raises a job's exception (the app records failures itself)
            first += len(batch)
            returns.append(results)
        return returns


ConfigStore.instance().store(group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="dllm-harness")
