"""Weights & Biases in and out: sweep cells read back from W&B runs, and a report logged to one run.

    python -m analysis.collect --wandb entity/project [--group SWEEP] --out cells.csv
    python -m analysis.report SWEEP_DIR --wandb entity/project --group SWEEP

Reading: the sweep app logs each cell as one run, with `config` the resolved config (nested model / task /
decoding / ...) and `summary` holding accuracy, accuracy_stderr (0-1, as in result.json), nfe, tpf,
tokens_per_second, latency_p50, latency_p90, eotp_skipped, speedup, nfe_ratio, config_hash, device,
batch_size (tokens and raw_tokens when present). Each run becomes the record dict of a `result.json` and goes
through `analysis.cells.cell_row`, so both sources share one cell schema. A run whose state is not
"finished" is listed in `problems`, as are runs that lack a task, strategy or accuracy; runs of job_type
"analysis" (reports logged by `log_report`, one run per sweep) are not cells and are passed over.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from .cells import Collected, cell_row, cells_frame, missing_fields

SUMMARY_SPEED = ("nfe", "tpf", "tokens", "raw_tokens", "tokens_per_second", "latency_p50", "latency_p90",
                 "eotp_skipped", "remasked", "samples", "gen_length")
SUMMARY_TOP = ("speedup", "speedup_q1", "speedup_q3", "nfe_ratio", "baseline_hash", "device_name")


def _api():
    import wandb
    return wandb.Api()


def _plain(mapping) -> dict:
    """A run's config or summary (a dict, or W&B's summary object) as a plain dict."""
    if mapping is None:
        return {}
    if isinstance(mapping, Mapping):
        return dict(mapping)
    try:
        return {key: mapping[key] for key in mapping.keys()}
    except Exception:
        return {}


def _nested(config: dict) -> dict:
    """Config keys flattened as "decoding.strategy" (or "decoding/strategy") put back into nested dicts;
    W&B-internal keys (leading underscore) dropped."""
    out: dict = {}
    for key, value in config.items():
        if str(key).startswith("_"):
            continue
        *parents, leaf = str(key).replace("/", ".").split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if isinstance(value, Mapping):
            node[leaf] = {**(node[leaf] if isinstance(node.get(leaf), dict) else {}), **value}
        else:
            node[leaf] = value
    return out


def _value(summary: dict, key: str, default=None):
    value = summary.get(key, default)
    if isinstance(value, float) and math.isnan(value):
        return default
    return value


def run_record(run) -> dict:
    """The `result.json`-shaped record of one W&B run (see the module docstring)."""
    config = _nested(_plain(run.config))
    summary = _plain(run.summary)
    return {"status": "complete", "config_hash": _value(summary, "config_hash", config.get("config_hash")),
            "config": config,
            "metrics": {"accuracy": _value(summary, "accuracy"), "accuracy_stderr": _value(summary, "accuracy_stderr")},
            "speed": {key: _value(summary, key) for key in SUMMARY_SPEED},
            **{key: _value(summary, key) for key in SUMMARY_TOP},
            "device": _value(summary, "device", config.get("device")),
            "batch_size": _value(summary, "batch_size", config.get("batch_size")),
            "timing": {"trusted": _value(summary, "timing_trusted")}}


def collect_wandb(path: str, group: str | None = None, api=None) -> Collected:
    """The cells logged to the W&B project `path` ("entity/project"), optionally only the runs of `group`,
    in `analysis.collect`'s cell schema (`path` column: "wandb:entity/project/<run id>"). `api` defaults to
    `wandb.Api()`; anything with `.runs(path, filters=...)` returning runs with `.config`, `.summary`,
    `.state`, `.name`, `.id` will do. Samples are not read back (the samples frame is empty)."""
    rows, problems = [], []
    try:
        api = api if api is not None else _api()
        runs = list(api.runs(path, filters={"group": group}) if group else api.runs(path))
    except Exception as err:
        problems.append(f"wandb:{path}: could not list runs ({type(err).__name__}: {err})")
        runs = []
    for run in runs:
        if getattr(run, "job_type", None) == "analysis":  # a report logged by `log_report`, not a cell
            continue
        where = f"wandb:{path}/{getattr(run, 'id', '?')}"
        label = f"{where} ({getattr(run, 'name', '?')})"
        state = getattr(run, "state", None)
        if state != "finished":
            problems.append(f"{label}: run {state or 'in unknown state'}")
            continue
        try:
            record = run_record(run)
        except Exception as err:
            problems.append(f"{label}: unreadable ({type(err).__name__}: {err})")
            continue
        status = _plain(run.summary).get("status")
        if status not in (None, "complete"):
            problems.append(f"{label}: {status}")
            continue
        row = cell_row(record, Path(where) / "run")
        row["path"] = where
        missing = missing_fields(row)
        if missing:
            problems.append(f"{label}: incomplete record, missing {', '.join(missing)}")
            continue
        rows.append(row)
    return Collected(cells_frame(rows), pd.DataFrame(), problems)


def _loggable(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain Python values (None for missing) that wandb.Table accepts whatever the pandas dtypes."""
    frame = frame.reset_index(drop=True)
    return frame.astype(object).where(frame.notna(), None)


def analysis_run_id(project: str, sweep: str) -> str:
    """The report's run id: one per (project, sweep), so a re-run of the report updates that run."""
    project_name = str(project).rpartition("/")[2]  # "entity/project" and "project" name the same run
    return "analysis-" + hashlib.sha256(f"{project_name}\n{sweep}".encode()).hexdigest()[:16]


def log_report(paths: Iterable[str | Path], tables: Mapping[str, pd.DataFrame], project: str,
               group: str | None = None, mode: str = "online", dir: str | Path | None = None,
               name: str | None = None, run_id: str | None = None) -> Path | None:
    """Log the written PNGs among `paths` (as wandb.Image, key "figures/<stem>") and `tables` (as wandb.Table,
    key "tables/<name>") into a run of job_type "analysis" in `project` ("entity/project" or "project") and
    `group`; `mode` is "online", "offline" or "disabled"; `dir` is where W&B writes its run folder (default:
    $WANDB_DIR or the working folder). With `run_id` (see `analysis_run_id`) the run of that id is resumed
    when it exists: online, W&B appends the new figures and tables to it (its summary shows the latest);
    offline, each call writes a run folder holding that id and marked as resumed, and `wandb sync` uploads
    them in order into that one run. Returns the run's local folder (None when disabled).
    Any W&B failure is reported as a warning and returns None: logging never takes the analysis down."""
    try:
        import wandb
        entity, _, project_name = str(project).rpartition("/")
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(entity=entity or None, project=project_name, group=group, job_type="analysis", mode=mode,
                         dir=str(dir) if dir is not None else None, name=name, id=run_id,
                         resume="allow" if run_id else None, reinit="create_new")
        try:
            payload = {f"figures/{Path(p).stem}": wandb.Image(str(p)) for p in paths
                       if Path(p).suffix == ".png" and Path(p).exists()}
            payload.update({f"tables/{key}": wandb.Table(dataframe=_loggable(frame))
                            for key, frame in tables.items() if frame is not None and not frame.empty})
            if payload:
                run.log(payload)
            folder = None if mode == "disabled" else Path(run.dir).parent
        finally:
            run.finish()
        return folder
    except Exception as err:  # noqa: BLE001 - W&B is optional here
        warnings.warn(f"wandb logging failed ({type(err).__name__}: {err})", stacklevel=2)
        return None
