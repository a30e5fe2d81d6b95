"""The sweep's result store: one folder per cell holding `result.json` (+ `samples.jsonl`), found again by
the hash of the cell's resolved config, so a restarted sweep skips finished cells and runs no cell twice.

`result.json` is written last and atomically (temporary file, then rename): a cell whose record says
"complete" is finished; a killed cell leaves no record (or its earlier one) and runs again. `.index/<hash>`
points at the folder of each complete record, so finding a cell costs one file read, not a scan of the
store; a store without an index (written by hand or by an older version) is indexed by one scan.

The index is a hint checked against the records, never the truth: its entry is written before the record
(a kill in between leaves an entry whose folder holds no complete record of that hash, which reads as "not
done"), and a complete record found in the cell's own folder but not in the index is indexed on sight.
A full disk stops the sweep with one line naming the store (`StoreFull`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path

# Keys that do not change what a cell measures: where it is stored, how it is tracked, re-run switches.
UNHASHED = ("tracking", "store", "sweep", "force", "analyse")
INDEX, BUILT = ".index", ".built"


class StoreFull(Exception):
    """No space left where the store is: no record can be written, so the sweep stops."""


def digest_of(value) -> str:
    """A stable 16-hex-digit digest of a JSON-able value (key order does not matter)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(config: dict, fingerprints: dict) -> str:
    """Stable hash of what defines a cell: its settings (model, task, decoding, batch, device kind, ...) and the
    fingerprints of the files it reads (`harness.fingerprints`)."""
    return digest_of({k: v for k, v in config.items() if k not in UNHASHED} | {"fingerprints": fingerprints})


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of writers that were killed before their rename (their process is gone)."""
    for tmp in folder.glob(".*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def write_record(folder: Path, record: dict, samples: list[dict] | None, store: Path) -> Path:
    """samples.jsonl first, then a complete record's index entry in `store` (always: an unindexed complete
    record would be invisible to `find_complete`), result.json last; each atomically."""
    folder = Path(folder)
    remove_stale_temporaries(folder)
    if samples is not None:
        write_atomic(folder / "samples.jsonl", "".join(json.dumps(s, default=str) + "\n" for s in samples))
    if record.get("status") == "complete":
        index_record(Path(store), record["config_hash"], folder)
    write_atomic(folder / "result.json", json.dumps(record, indent=2, default=str) + "\n")
    return folder / "result.json"


@contextlib.contextmanager
def full_disk_named(store: Path):
    """A full disk while the store is written becomes `StoreFull`, one line naming the store."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f": {err.filename}" if err.filename else ""
            raise StoreFull(f"the store {store} is full ({err.strerror}{where})") from None
        raise


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def find_complete(store: Path, digest: str, own_folders: tuple[Path, ...] = ()) -> dict | None:
    """The complete record with this config hash in the store, if any: where the index points, else in one
    of the cell's `own_folders` (a record whose writer was killed before it was indexed, or copied in),
    which is then indexed."""
    if not store.exists():
        return None
    if not (store / INDEX / BUILT).exists():
        build_index(store)
    try:
        indexed = (store / (store / INDEX / digest).read_text(),)
    except OSError:
        indexed = ()
    for folder in (*indexed, *own_folders):
        record = read_record(folder / "result.json")
        if record and record.get("config_hash") == digest and record.get("status") == "complete":
            if folder not in indexed:
                index_record(store, digest, folder)
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
        remove_stale_temporaries(store / INDEX)
        for path in store.rglob("result.json"):
            remove_stale_temporaries(path.parent)
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
