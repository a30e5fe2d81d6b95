"""Weights & Biases: one run per cell (config = the resolved config, summary = the metrics, a Table of the
samples with their speed statistics), finished before the next cell starts. Offline by default; a W&B
failure is logged and never fails the cell or touches its local record."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("doc_id", "nfe", "tokens", "raw_tokens", "tpf", "seconds", "eotp_skipped")


def summary_of(record: dict) -> dict:
    """The flat numbers a cell's W&B summary holds (what `analysis.wandb_io` reads back)."""
    return {**record.get("metrics", {}), **record.get("speed", {}),
            **{k: record.get(k) for k in ("speedup", "nfe_ratio", "config_hash", "device", "dtype", "batch_size")}}


def log_cell(tracking: dict, record: dict, samples: list[dict], folder, metric: str) -> str | None:
    """Log one cell; returns the run's local folder, or None when tracking is off or W&B failed."""
    mode = tracking["mode"]
    if mode == "disabled":
        return None
    run = None
    try:
        import wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        config = record["config"]
        run = wandb.init(
            project=tracking["project"], entity=tracking.get("entity"), group=config.get("sweep"),
            job_type=config["decoding"]["strategy"], tags=list(tracking.get("tags") or []),
            name=f"{config['task']['name']}-{config['decoding']['strategy']}-{record['config_hash'][:8]}",
            config=config, dir=str(folder), mode=mode, reinit="finish_previous")
        run.summary.update({k: v for k, v in summary_of(record).items() if v is not None})
        columns = [c for c in (*SAMPLE_COLUMNS, metric) if samples and c in samples[0]]
        if columns:
            run.log({"samples": wandb.Table(columns=columns, data=[[s.get(c) for c in columns] for s in samples])})
        run_dir = run.dir
        run.finish()
        return str(run_dir)
    except Exception as err:  # tracking must never cost a result
        log.warning(f"W&B logging failed ({type(err).__name__}: {err}); the local record is kept")
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:
                pass
        return None
