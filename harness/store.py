"""The sweep's result store: one folder per cell holding `result.json` (+ `samples.jsonl`), found again by
the hash of the cell's resolved config, so a restarted sweep skips finished cells and runs no cell twice.

`result.json` is written last and atomically (temporary file, then rename): a cell whose record says
"complete" is finished; a killed cell leaves no record (or its earlier one) and runs again. `.index/<hash>`
points at the folder of each complete record, so finding a cell costs one file read, not a scan of the
store; a store without an index (written by hand or by an older version) is indexed by one scan.
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
INDEX, BUILT = ".index", ".built"


def config_hash(config: dict) -> str:
    """Stable hash of the settings that define a cell (model, task, decoding, batch, device kind, ...)."""
    keyed = {k: v for k, v in config.items() if k not in UNHASHED}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_record(folder: Path, record: dict, samples: list[dict] | None, store: Path) -> Path:
    """samples.jsonl first, result.json last, each atomically; a complete record is indexed in `store` (always:
    an unindexed complete record would be invisible to `find_complete` and its cell would run again)."""
    if samples is not None:
        write_atomic(folder / "samples.jsonl", "".join(json.dumps(s, default=str) + "\n" for s in samples))
    write_atomic(folder / "result.json", json.dumps(record, indent=2, default=str) + "\n")
    if record.get("status") == "complete":
        index_record(Path(store), record["config_hash"], Path(folder))
    return folder / "result.json"


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def find_complete(store: Path, digest: str) -> dict | None:
    """The complete record with this config hash in the store, if any."""
    if not store.exists():
        return None
    if not (store / INDEX / BUILT).exists():
        build_index(store)
    try:
        folder = store / (store / INDEX / digest).read_text()
    except OSError:
        return None
    record = read_record(folder / "result.json")
    if record and record.get("config_hash") == digest and record.get("status") == "complete":
        return record | {"path": str(folder)}
    return None  # the record was removed or replaced since it was indexed


def index_record(store: Path, digest: str, folder: Path) -> None:
    """Point the hash at the folder, relative to the store so that a moved store stays valid."""
    write_atomic(store / INDEX / digest, os.path.relpath(folder.resolve(), store.resolve()))


def build_index(store: Path) -> None:
    """Index every complete record under the store (one scan; under a lock so parallel jobs do it once)."""
    with cell_lock(store, "index"):
        if (store / INDEX / BUILT).exists():
            return
        for path in store.rglob("result.json"):
            record = read_record(path)
            if record and record.get("status") == "complete" and "config_hash" in record:
                index_record(store, record["config_hash"], path.parent)
        write_atomic(store / INDEX / BUILT, "")


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
