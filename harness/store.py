"""The sweep's result store: one folder per cell holding `result.json` (+ `samples.jsonl`), found again by
the hash of the cell's resolved config, so a restarted sweep skips finished cells and runs no cell twice.

`result.json` is written last and atomically (temporary file, then rename): a cell whose record says
"complete" is finished; a killed cell leaves no record (or its earlier one) and runs again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

# Keys that do not change what a cell measures: where it is stored, how it is tracked, re-run switches.
UNHASHED = ("tracking", "store", "sweep", "force", "analyse")


def config_hash(config: dict) -> str:
    """Stable hash of the settings that define a cell (model, task, decoding, batch, device kind, ...)."""
    keyed = {k: v for k, v in config.items() if k not in UNHASHED}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_record(folder: Path, record: dict, samples: list[dict] | None = None) -> Path:
    """samples.jsonl first, result.json last, each atomically."""
    if samples is not None:
        write_atomic(folder / "samples.jsonl", "".join(json.dumps(s, default=str) + "\n" for s in samples))
    write_atomic(folder / "result.json", json.dumps(record, indent=2, default=str) + "\n")
    return folder / "result.json"


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def find_complete(store: Path, digest: str) -> dict | None:
    """A complete record with this config hash anywhere under the store."""
    if not store.exists():
        return None
    for path in store.rglob("result.json"):
        record = read_record(path)
        if record and record.get("config_hash") == digest and record.get("status") == "complete":
            return record | {"path": str(path.parent)}
    return None


@contextlib.contextmanager
def cell_lock(store: Path, digest: str):
    """Exclusive per-cell lock, so parallel jobs that need the same (baseline) cell run it once."""
    lock_dir = store / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / digest, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
