"""Weights & Biases: one run per cell (config = the resolved config, summary = the metrics, a Table of the
samples with their speed statistics), finished before the next cell starts. Offline by default; a W&B
failure is logged and never fails the cell or touches its local record. A failed cell's run ends as failed
(exit code 1) with its error in the summary.

Online mode without a network gives up after `WANDB_INIT_TIMEOUT` seconds (default 15, not W&B's 90) and
logs the run offline beside the cell; a marker in the store (`.wandb-offline`) tells the sweep's later cells,
in any process, to log offline at once, for an hour (delete the marker to retry sooner). Offline runs are
uploaded later with `wandb sync`.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("doc_id", "nfe", "tokens", "raw_tokens", "tpf", "seconds", "eotp_skipped")
OFFLINE_MARKER = ".wandb-offline"
OFFLINE_FOR = 3600  # seconds a give-up holds before online mode is tried again
INIT_TIMEOUT = 15  # seconds, unless WANDB_INIT_TIMEOUT says otherwise


def summary_of(record: dict) -> dict:
    """The flat numbers a cell's W&B summary holds (what `analysis.wandb_io` reads back), and a failed cell's
    status and error."""
    return {**record.get("metrics", {}), **record.get("speed", {}),
            **{k: record.get(k) for k in ("speedup", "speedup_q1", "speedup_q3", "nfe_ratio", "config_hash",
                                          "baseline_hash", "device", "device_name", "dtype", "batch_size",
                                          "status", "error")},
            "timing_trusted": record.get("timing", {}).get("trusted")}


def log_cell(tracking: dict, record: dict, samples: list[dict], folder, metric: str) -> str | None:
    """Log one cell; returns the run's local folder, or None when tracking is off or W&B failed."""
    mode = tracking["mode"]
    if mode == "disabled":
        return None
    marker = Path(record["config"].get("store", ".")) / OFFLINE_MARKER
    if mode == "online" and gave_up_online(marker):
        log.info(f"W&B: logging offline, online mode was given up for this sweep ({marker})")
        mode = "offline"
    run = None
    try:
        import wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            run = _init(wandb, tracking, record, folder, mode)
        except Exception as err:
            if mode != "online":
                raise
            give_up_online(marker, err)
            run = _init(wandb, tracking, record, folder, "offline")
        run.summary.update({k: v for k, v in summary_of(record).items() if v is not None})
        columns = [c for c in (*SAMPLE_COLUMNS, metric) if samples and c in samples[0]]
        if columns:
            run.log({"samples": wandb.Table(columns=columns, data=[[s.get(c) for c in columns] for s in samples])})
        run_dir = run.dir
        run.finish(exit_code=0 if record.get("status") == "complete" else 1)
        return str(run_dir)
    except Exception as err:  # tracking must never cost a result
        log.warning(f"W&B logging failed ({type(err).__name__}: {err}); the local record is kept")
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:
                pass
        return None


def _init(wandb, tracking: dict, record: dict, folder, mode: str):
    config = record["config"]
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT))
    return wandb.init(
        project=tracking["project"], entity=tracking.get("entity"), group=config.get("sweep"),
        job_type=config["decoding"]["strategy"], tags=list(tracking.get("tags") or []),
        name=f"{config['task']['name']}-{config['decoding']['strategy']}-{record['config_hash'][:8]}",
        config=config, dir=str(folder), mode=mode, reinit="finish_previous",
        settings=wandb.Settings(init_timeout=timeout))


def gave_up_online(marker: Path) -> bool:
    try:
        return time.time() - marker.stat().st_mtime < OFFLINE_FOR
    except OSError:
        return False


def give_up_online(marker: Path, err: Exception) -> None:
    """The one warning of a sweep that cannot reach W&B; the marker spares its other cells the timeout."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    log.warning(f"W&B online unreachable ({reason}); this sweep logs offline beside each cell for the next "
                f"{OFFLINE_FOR // 60} min (marker {marker}); upload later with `wandb sync`")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{reason}\n")
    except OSError:
        pass  # the store's own writes will report a store that cannot be written
