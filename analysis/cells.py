"""The cell schema shared by every source of records (`result.json` folders, W&B runs): one row per cell.

Fields read from a record (missing ones become NaN):

    {"config_hash", "baseline_hash", "config": {"model": {"name"}, "task": {"name"}, "decoding": {...}},
     "method": {"strategy", "knobs": {own knob: value}, "needs_reference", "label"},
     "metrics": {"accuracy": 0-1, "accuracy_stderr": 0-1},
     "speed": {"nfe", "tpf", "tokens_per_second", "latency_p50", "latency_p90", "eotp_skipped", "tokens",
               "raw_tokens", "remasked", "samples", "gen_length"},
     "speedup", "speedup_q1", "speedup_q3", "nfe_ratio", "timing": {"trusted"}, "device", "device_name",
     "batch_size"}

A record without `method` (older ones, W&B runs) gets it from `config.decoding` and the strategy registry.
Besides the fixed columns, each knob seen in the sweep becomes a column (NaN where a strategy lacks it), so
analysis code groups and labels cells without naming any strategy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.decoding import method_of

SPEED_COLUMNS = ("nfe", "tpf", "tokens_per_second", "latency_p50", "latency_p90", "eotp_skipped", "tokens",
                 "raw_tokens", "remasked")
CELL_COLUMNS = ["model", "task", "strategy", "knobs", "label", "needs_reference", "is_reference", "eotp", "cache",
                "gen_length", "block_length", "accuracy", "accuracy_stderr", *SPEED_COLUMNS, "speedup",
                "speedup_q1", "speedup_q3", "nfe_ratio", "timing_trusted", "device", "device_name", "batch_size",
                "samples", "config_hash", "baseline_hash", "path"]


@dataclass
class Collected:
    cells: pd.DataFrame
    samples: pd.DataFrame
    problems: list[str] = field(default_factory=list)  # records skipped, with the reason


def cell_row(record: dict, path: Path) -> dict:
    cfg = record.get("config", {})
    decoding, metrics, speed = cfg.get("decoding", {}), record.get("metrics", {}), record.get("speed", {})
    method = record.get("method") or method_of(decoding)
    if "label" not in method:  # written before labels: the registry's declaration labels it now
        method = {**method, "label": method_of({"strategy": method["strategy"], **method["knobs"]})["label"]}
    pct = (lambda v: None if v is None else 100 * v)
    return {
        "model": cfg.get("model", {}).get("name"), "task": cfg.get("task", {}).get("name"),
        "strategy": method["strategy"], "knobs": dict(method["knobs"]), "label": method.get("label"),
        "needs_reference": bool(method["needs_reference"]),
        "is_reference": record.get("baseline_hash") is not None
        and record.get("config_hash") == record.get("baseline_hash"),
        "eotp": bool(decoding.get("eotp", False)), "cache": decoding.get("cache", "none"),
        # G is None in the config when each task's max_gen_toks set it; the speed record has the G used
        "gen_length": decoding.get("gen_length") or speed.get("gen_length"),
        "block_length": decoding.get("block_length"),
        "accuracy": pct(metrics.get("accuracy")), "accuracy_stderr": pct(metrics.get("accuracy_stderr")),
        **{k: speed.get(k) for k in SPEED_COLUMNS},
        **{k: record.get(k) for k in ("speedup", "speedup_q1", "speedup_q3", "nfe_ratio", "device", "device_name",
                                      "batch_size", "config_hash", "baseline_hash")},
        "timing_trusted": record.get("timing", {}).get("trusted"), "samples": speed.get("samples"),
        "path": str(path.parent),
    }


def cells_frame(rows: list[dict]) -> pd.DataFrame:
    """The cells table: the fixed columns, then one column per knob seen (in order of appearance)."""
    knobs = list(dict.fromkeys(k for row in rows for k in row["knobs"]))
    clash = set(knobs) & set(CELL_COLUMNS)
    if clash:
        raise ValueError(f"knob(s) {sorted(clash)} would overwrite cell columns of the same name")
    return pd.DataFrame([{**row, **{k: row["knobs"].get(k) for k in knobs}} for row in rows],
                        columns=CELL_COLUMNS + knobs)


def knob_names(cells: pd.DataFrame) -> list[str]:
    """The knob columns of a cells table."""
    return [c for c in cells.columns if c not in CELL_COLUMNS]


def missing_fields(row: dict) -> list[str]:
    """The fields without which a cell row cannot be placed in any table."""
    return [k for k in ("task", "strategy", "accuracy") if row[k] is None]


def method_label(row) -> str:
    """A readable name for a cell's decoding setting: the record's method label (strategy and knobs by their
    declared symbols) and the loop switches, e.g. "threshold τ=0.9 +EoTP +dual"."""
    label = row.get("label")
    if not isinstance(label, str):  # a record from before labels
        label = method_of({"strategy": row["strategy"], **(row.get("knobs") or {})})["label"]
    name = label  # + the loop switches
    if row.get("eotp"):
        name += " +EoTP"
    if row.get("cache", "none") not in ("none", None):
        name += f" +{row['cache']}"
    return name
