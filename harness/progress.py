"""What a person following a sweep reads: one result line per cell, a progress line with ETA after each job
(harness.callbacks.SweepProgress), and short cell folder names: the `${cell_name:}` resolver behind
`hydra.run.dir` / `hydra.sweep.subdir` in conf/config.yaml, e.g. `arith/threshold,eotp=true,threshold=0.9`.

Folder names are for people only: records are found by config hash through the store's index."""
from __future__ import annotations

import re
from pathlib import PurePosixPath

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from .store import UNHASHED, digest_of

UNTRUSTED = "†"  # as in the analysis tables (analysis.style)
SHOWN_BY_VALUE = ("task", "decoding")  # the folder and the name's first word
SHORT_PREFIXES = ("decoding.", "task.")  # their keys are unique without the prefix (model.* keys are not)
LONGEST_NAME = 120


def result_line(record: dict) -> str:
    """`arith | threshold τ=0.9 EoTP cache=dual | accuracy 62.5 ± 17.1 % | NFE 6.75 | TPF 1.63 |
    speedup 4.11 [4.06–4.74] | 1.3 s`; a skipped cell ends with where its record is, a failed one with its
    error; an untrusted timing carries "†" and the first reason."""
    config, decoding = record["config"], record["config"]["decoding"]
    label = record.get("method", {}).get("label") or decoding["strategy"]  # records before `method`: its strategy
    method = [label] + ["EoTP"] * bool(decoding.get("eotp"))
    method += [f"cache={decoding['cache']}"] if decoding.get("cache", "none") != "none" else []
    parts = [config["task"]["name"], " ".join(method)]
    seconds = f"{record.get('timings', {}).get('cell', float('nan')):.1f} s"
    if "path" in record:  # found complete in the store (harness.store.find_complete): not run again
        seconds = f"skipped: complete record {record['config_hash']} at {record['path']}"
    if record["status"] != "complete":
        return " | ".join(parts + [f"{record['status']}: {record.get('error')}", seconds])
    metrics, speed = record["metrics"], record["speed"]
    stderr = metrics.get("accuracy_stderr")
    parts.append(f"accuracy {100 * metrics['accuracy']:.1f}" + (f" ± {100 * stderr:.1f}" if stderr is not None
                                                                else "") + " %")
    parts += [f"NFE {speed['nfe']:.2f}", f"TPF {speed['tpf']:.2f}", speedup_text(record), seconds]
    return " | ".join(parts)


def speedup_text(record: dict) -> str:
    if record.get("baseline_hash") == record["config_hash"]:
        return "speedup 1 (the baseline)"
    if record.get("speedup") is None:
        return "speedup not measured (pair_rounds=0)"
    q1, q3 = record.get("speedup_q1"), record.get("speedup_q3")
    text = f"speedup {record['speedup']:.2f}" + (f" [{q1:.2f}–{q3:.2f}]" if q1 is not None and q3 is not None else "")
    reasons = record["timing"].get("reasons") or []
    if reasons:
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        text += f" {UNTRUSTED} untrusted timing: {reasons[0]}{more}"
    return text


def progress_line(done: int, total: int | None, elapsed: float) -> str:
    """`[12/96] 3 min 10 s elapsed, ETA 21 min`: the ETA assumes the remaining jobs take the mean time so far."""
    line = f"[{done}/{total or '?'}] {duration(elapsed)} elapsed"
    if total and 0 < done < total:
        line += f", ETA {duration(elapsed / done * (total - done))}"
    return line


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def cell_name(*, _root_) -> str:
    """`<task>/<strategy>[,key=value...]`: the job's command-line and grid overrides, sorted, less hydra.*,
    the keys `override_dirname` excludes and those that change no record (tracking, store, ...); keys without
    `decoding.` / `task.`, a path value by its last folder and a digest of the whole path (never a `/`),
    characters outside [A-Za-z0-9._+@-] as `_`; a name over 120 characters is cut and ends with a digest."""
    hydra = _root_.hydra
    excluded = set(hydra.job.config.override_dirname.exclude_keys)
    items = []
    for override in OverridesParser.create().parse_overrides(list(hydra.overrides.task)):
        key = override.key_or_group
        top = key.split(".")[0].split("/")[0]
        if key in excluded or key in SHOWN_BY_VALUE or top in UNHASHED or top == "hydra":
            continue
        short = next((key[len(p):] for p in SHORT_PREFIXES if key.startswith(p)), key)
        value = override.value()
        text = str(value).lower() if isinstance(value, bool) else override.get_value_element_as_str()  # as typed
        items.append(f"{short}={safe(text)}")
    name = ",".join([safe(_root_.decoding.strategy), *sorted(items)])
    if len(name) > LONGEST_NAME:
        name = f"{name[:LONGEST_NAME - 17]}-{digest_of(name)}"
    return f"{safe(_root_.task.name)}/{name}"


def safe(value) -> str:
    value = str(value)
    if "/" in value:  # a path: its last part, and a digest so that two paths never share a folder
        value = f"{PurePosixPath(value).name}@{digest_of(value)[:4]}"
    return re.sub(r"[^A-Za-z0-9._+@-]+", "_", value) or "_"


if not OmegaConf.has_resolver("cell_name"):
    OmegaConf.register_new_resolver("cell_name", cell_name)
