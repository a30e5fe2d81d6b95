"""Collect sweep records into tidy DataFrames: one row per cell, and one row per sample.

    python -m analysis.collect multirun/2026-11-25/quickstart [more folders] --out cells.csv
    python -m analysis.collect --wandb entity/project [--group G] --out cells.csv   # the runs logged to W&B

A cell's record is `result.json` (written by the sweep), with its per-sample records in `samples.jsonl`
beside it; the fields read and the columns are `analysis.cells`' (re-exported here).

Every sample row carries its cell's `config_hash` and `path` (the cell folder), to join with the cells.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from .cells import CELL_COLUMNS, Collected, cell_row, cells_frame, knob_names, method_label, missing_fields
from .wandb_io import collect_wandb


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
    return Collected(cells_frame(rows), pd.DataFrame(samples), problems)


def collect_and_report(folders) -> Collected:
    """`collect`, saying which records were skipped and why (for the command-line scripts)."""
    got = collect(folders)
    for problem in got.problems:
        print(f"skipped: {problem}")
    return got


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


__all__ = ["CELL_COLUMNS", "Collected", "cell_row", "collect", "collect_and_report", "knob_names", "method_label",
           "missing_fields"]

if __name__ == "__main__":
    main()
