"""Weights & Biases: one run per evaluated cell, opened when the cell starts (so W&B records the cell's console
and system metrics while it runs) and finished with its record: config = the resolved config, summary = the
metrics (and a failed cell's status and error), a Table of the samples. A complete cell's run finishes with
exit code 0; a failed one's with exit code 1, which W&B shows as failed. A skipped cell opens no run. Runs are
named after what they measure: "arith · threshold τ=0.9 · eotp · dual · 1a2b3c" (task, strategy with its
knobs, EoTP, KV cache, the config hash's start). Offline by default; a W&B failure is logged and never fails
the cell or touches its local record.

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


def run_name(record: dict) -> str:
    """What the cell measures, e.g. "arith · threshold τ=0.9 · eotp · dual · 1a2b3c"; the hash's start tells
    apart cells that differ elsewhere (model, lengths, batch size)."""
    config = record["config"]
    decoding = config["decoding"]
    parts = [config["task"]["name"], record["method"]["label"]]
    parts += ["eotp"] if decoding.get("eotp") else []
    parts += [decoding["cache"]] if decoding.get("cache", "none") != "none" else []
    return " · ".join([*parts, record["config_hash"][:6]])


def sample_rows(samples: list[dict], metric: str) -> list[dict]:
    """One row per problem for the samples Table: the prompt as lm-eval hands it to the model (a model with a
    chat template wraps it in that), the generated text, the target, the cell's metric (e.g. `acc`) and the
    speed the harness attached to the sample (latency in seconds). lm-eval logs a sample per filter; the rows
    are those of the metric's filter (e.g. `exact_match,strict-match`)."""
    name, _, wanted = metric.partition(",")
    return [{"doc_id": sample.get("doc_id"), "prompt": _first(sample.get("arguments")),
             "output": _first(sample.get("resps")), "target": str(sample.get("target")), name: sample.get(name),
             "nfe": sample.get("nfe"), "tpf": sample.get("tpf"), "latency_s": sample.get("seconds"),
             **{field: sample.get(field) for field in ("tokens", "raw_tokens", "eotp_skipped", "remasked")}}
            for sample in samples if not wanted or sample.get("filter", wanted) == wanted]


def _first(requests) -> str:
    """The first request's first item: the model's input text in `arguments`, its output text in `resps`."""
    try:
        return str(requests[0][0])
    except (TypeError, IndexError, KeyError):
        return ""


def start_cell(tracking: dict, record: dict, folder) -> object | None:
    """Open the cell's run in `folder` (`record` holds its config, hash and method); None when tracking is
    off or W&B failed. `finish_cell` closes it."""
    mode = tracking["mode"]
    if mode == "disabled":
        return None
    marker = Path(record["config"].get("store", ".")) / OFFLINE_MARKER
    if mode == "online" and gave_up_online(marker):
        log.info(f"W&B: logging offline, online mode was given up for this sweep ({marker})")
        mode = "offline"
    try:
        import wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        Path(folder).mkdir(parents=True, exist_ok=True)
        try:
            return _init(wandb, tracking, record, folder, mode)
        except Exception as err:
            if mode != "online":
                raise
            give_up_online(marker, err)
            return _init(wandb, tracking, record, folder, "offline")
    except Exception as err:  # tracking must never cost a result
        log.warning(f"W&B could not start the cell's run ({type(err).__name__}: {err}); the cell goes on")
        return None


def finish_cell(run, record: dict, samples: list[dict], metric: str) -> None:
    """Finish the run `start_cell` opened with the cell's record: summary, samples Table (rows of `metric`,
    e.g. "acc,none"), exit code 0 when complete, else 1."""
    if run is None:
        return
    try:
        import wandb
        run.summary.update({k: v for k, v in summary_of(record).items() if v is not None})
        rows = sample_rows(samples, metric)
        if rows:
            run.log({"samples": wandb.Table(columns=list(rows[0]), data=[list(row.values()) for row in rows])})
        run.finish(exit_code=0 if record.get("status") == "complete" else 1)
    except Exception as err:  # tracking must never cost a result
        log.warning(f"W&B logging failed ({type(err).__name__}: {err}); the local record is kept")
        try:
            run.finish(exit_code=1)
        except Exception:
            pass


def _init(wandb, tracking: dict, record: dict, folder, mode: str):
    config = record["config"]
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT))
    return wandb.init(
        project=tracking["project"], entity=tracking.get("entity"), group=config.get("sweep"),
        job_type=config["decoding"]["strategy"], tags=list(tracking.get("tags") or []), name=run_name(record),
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
