"""Collect sweep records into tidy DataFrames: one row per cell, and one row per sample.

    python -m analysis.collect multirun/2026-11-25/quickstart [more folders] --out cells.csv
    python -m analysis.collect --wandb entity/project [--group G] --out cells.csv   # the runs logged to W&B

A cell's record is `result.json` (written by the sweep), with its per-sample records in `samples.jsonl`
beside it. The fields read (missing ones become NaN):

    {"status": "complete" | "failed", "error": "...", "config_hash": "...",
     "config": {"model": {"name": ...}, "task": {"name": ...},
                "decoding": {"strategy", "threshold", "filter_threshold", "outranked_threshold", "eotp", "cache",
                             "gen_length", "block_length", ...}},
     "metrics": {"accuracy": 0-1, "accuracy_stderr": 0-1},
     "speed": {"nfe", "tpf", "tokens_per_second", "latency_p50", "latency_p90", "eotp_skipped", "tokens",
               "raw_tokens"},
     "speedup": ..., "speedup_q1": ..., "speedup_q3": ..., "timing": {"trusted": bool, ...},
     "nfe_ratio": ..., "device": ..., "dtype": ..., "batch_size": ...}

Every sample row carries its cell's `config_hash` and `path` (the cell folder), to join with the cells.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

CELL_COLUMNS = ["model", "task", "strategy", "threshold", "filter_threshold", "outranked_threshold", "eotp",
                "cache", "gen_length", "block_length", "accuracy", "accuracy_stderr", "nfe", "tpf",
                "tokens_per_second", "latency_p50", "latency_p90", "eotp_skipped", "tokens", "raw_tokens", "speedup",
                "speedup_q1", "speedup_q3", "nfe_ratio", "timing_trusted", "device", "batch_size", "config_hash",
                "path"]


@dataclass
class Collected:
    cells: pd.DataFrame
    samples: pd.DataFrame
    problems: list[str] = field(default_factory=list)  # records skipped, with the reason


def cell_row(record: dict, path: Path) -> dict:
    cfg, decoding = record.get("config", {}), record.get("config", {}).get("decoding", {})
    metrics, speed = record.get("metrics", {}), record.get("speed", {})
    strategy = decoding.get("strategy")
    pct = (lambda v: None if v is None else 100 * v)
    return {
        "model": cfg.get("model", {}).get("name"), "task": cfg.get("task", {}).get("name"), "strategy": strategy,
        # a knob only belongs to the strategy that reads it, so unrelated defaults do not split groups
        "threshold": decoding.get("threshold") if strategy == "threshold" else None,
        "filter_threshold": decoding.get("filter_threshold") if strategy == "learned" else None,
        "outranked_threshold": decoding.get("outranked_threshold") if strategy == "learned" else None,
        "eotp": bool(decoding.get("eotp", False)), "cache": decoding.get("cache", "none"),
        # G is None in the config when each task's max_gen_toks set it; the speed record has the G used
        "gen_length": decoding.get("gen_length") or speed.get("gen_length"),
        "block_length": decoding.get("block_length"),
        "accuracy": pct(metrics.get("accuracy")), "accuracy_stderr": pct(metrics.get("accuracy_stderr")),
        **{k: speed.get(k) for k in ("nfe", "tpf", "tokens_per_second", "latency_p50", "latency_p90",
                                      "eotp_skipped", "tokens", "raw_tokens")},
        "speedup": record.get("speedup"), "nfe_ratio": record.get("nfe_ratio"), "device": record.get("device"),
        "speedup_q1": record.get("speedup_q1"), "speedup_q3": record.get("speedup_q3"),
        "timing_trusted": record.get("timing", {}).get("trusted"),  # None: a record from before the rule
        "batch_size": record.get("batch_size"), "config_hash": record.get("config_hash"), "path": str(path.parent),
    }


def missing_fields(row: dict) -> list[str]:
    """The fields without which a cell row cannot be placed in any table."""
    return [k for k in ("task", "strategy", "accuracy") if row[k] is None]


def collect(folders: list[str | Path]) -> Collected:
    """Every `result.json` under `folders`; failed, unreadable or incomplete records are listed in
    `problems` instead of being dropped silently."""
    rows, samples, problems = [], [], []
    for folder in map(Path, folders):
        if not folder.exists():
            problems.append(f"{folder}: no such folder")
            continue
        for path in sorted(folder.rglob("result.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                problems.append(f"{path}: unreadable ({err})")
                continue
            if record.get("status") != "complete":
                problems.append(f"{path}: {record.get('status', 'incomplete')}"
                                + (f" ({record['error']})" if record.get("error") else ""))
                continue
            row = cell_row(record, path)
            missing = missing_fields(row)
            if missing:
                problems.append(f"{path}: incomplete record, missing {', '.join(missing)}")
                continue
            rows.append(row)
            sample_file = path.with_name("samples.jsonl")
            if sample_file.exists():
                for line in sample_file.read_text().splitlines():
                    if line.strip():
                        samples.append({"config_hash": row["config_hash"], **json.loads(line), "path": row["path"]})
    return Collected(pd.DataFrame(rows, columns=CELL_COLUMNS), pd.DataFrame(samples), problems)


def collect_and_report(folders) -> Collected:
    """`collect`, saying which records were skipped and why (for the command-line scripts)."""
    got = collect(folders)
    for problem in got.problems:
        print(f"skipped: {problem}")
    return got


def method_label(row) -> str:
    """A readable name for a cell's decoding setting: strategy, its knob, and the loop switches."""
    name = row["strategy"]
    if pd.notna(row.get("threshold")):
        name += f" τ={row['threshold']:g}"
    if pd.notna(row.get("filter_threshold")):
        name += f" τf={row['filter_threshold']:g}"
    if pd.notna(row.get("outranked_threshold")):
        name += f" τo={row['outranked_threshold']:g}"
    if row.get("eotp"):
        name += " +EoTP"
    if row.get("cache", "none") not in ("none", None):
        name += f" +{row['cache']}"
    return name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, help="write the cells as CSV (samples go to <out>.samples.csv)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs logged to this W&B project "
                        "instead of (or besides) folders; a run not finished is listed as skipped")
    parser.add_argument("--group", help="with --wandb: only the runs of this group (a sweep)")
    args = parser.parse_args(argv)
    if not args.folders and not args.wandb:
        parser.error("give sweep folders, --wandb entity/project, or both")
    got = collect_and_report(args.folders) if args.folders else None
    if args.wandb:
        from .wandb_io import collect_wandb
        remote = collect_wandb(args.wandb, args.group)
        for problem in remote.problems:
            print(f"skipped: {problem}")
        got = remote if got is None else Collected(
            pd.concat([got.cells, remote.cells], ignore_index=True),
            pd.concat([got.samples, remote.samples], ignore_index=True), got.problems + remote.problems)
    print(f"{len(got.cells)} cells, {len(got.samples)} samples")
    if args.out:
        got.cells.to_csv(args.out, index=False)
        got.samples.to_csv(args.out.with_suffix(".samples.csv"), index=False)
    else:
        print(got.cells.drop(columns=["path"]).to_string(index=False))


if __name__ == "__main__":
    main()
