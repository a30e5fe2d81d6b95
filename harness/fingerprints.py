"""What a cell measured besides its settings, as content fingerprints: the task's data files, the model's
weights and its tokenizer, the learned filter (only for a strategy that reads one) and the harness itself.
They are part of the cell's config hash, so changing any of them re-runs the cell and changing none skips it;
they are computed before any model loads (one stat per large file) and recorded in `result.json`.

Weights are large (16 GB for an 8B model), so a file's SHA-256 is computed once and then cached by
(path, size, mtime_ns, inode) in `<DLLM_HARNESS_DATA or ~/.cache/dllm-harness>/file-digests.json`: the
fingerprint is still the full content's, and later cells pay one stat per file. Replacing or rewriting a
file (new weights, a copy, a re-download) changes its mtime or inode, so the cache cannot return a stale
digest unless an in-place edit deliberately restores the old size and nanosecond mtime.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib.metadata import version
from pathlib import Path

from .store import cell_lock, config_hash, digest_of, read_record, write_atomic

PACKAGE = Path(__file__).resolve().parent
CACHED_FROM = 16 << 20  # smaller files are simply hashed again each time
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt",
                   "*.tiktoken", "chat_template*")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Libraries whose version changes a cell's result (prompts and scoring, tokenization, numerics).
LIBRARIES = ("lm_eval", "transformers", "torch")


def cache_file() -> Path:
    return Path(os.environ.get("DLLM_HARNESS_DATA", Path.home() / ".cache" / "dllm-harness")) / "file-digests.json"


def file_digest(path: Path) -> str | None:
    """The file's SHA-256 (None when it does not exist: the cell's own checks name the missing file)."""
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.st_size < CACHED_FROM:
        return _sha256(path)
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    cached = (read_record(cache_file()) or {}).get(key)
    if cached and cached["stamp"] == stamp:
        return cached["sha256"]
    digest = _sha256(path)
    with cell_lock(cache_file().parent, cache_file().name):  # parallel jobs add their entries one at a time
        cache = read_record(cache_file()) or {}
        write_atomic(cache_file(), json.dumps(cache | {key: {"stamp": stamp, "sha256": digest}}, indent=1))
    return digest


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def files_fingerprint(files: dict[str, Path]) -> str:
    """Keyed by role or name, not by location, so that moving a data or model folder changes nothing."""
    return digest_of({name: file_digest(path) for name, path in files.items()})


def data_fingerprint(task: dict) -> str | None:
    """The task's data files as lm-eval will read them (synthetic splits included); a hub dataset by name."""
    from .lmeval.tasks import TASK_NAMES, TaskError, task_config
    if task["name"] not in TASK_NAMES:
        return f"lm-eval:{task['name']}"  # lm-eval's own task: its version is in the harness fingerprint
    try:
        config = task_config(task["name"], task["data_dir"], task["num_fewshot"])
    except TaskError:
        return None  # the cell fails at its check, with that error
    files = config.get("dataset_kwargs", {}).get("data_files")
    if not files:
        return f"hub:{config['dataset_path']}/{config.get('dataset_name')}"
    return files_fingerprint({split: Path(path) for split, path in files.items()})


def model_files(folder: Path) -> dict[str, Path]:
    """What the loaders read besides the tokenizer: config, remote code, weights (shards as their index lists)."""
    names = {"config.json", "generation_config.json", *(p.name for p in folder.glob("*.py"))}
    for index in WEIGHT_INDEXES:
        try:
            names |= {index, *json.loads((folder / index).read_text())["weight_map"].values()}
            break
        except (OSError, ValueError, KeyError, AttributeError):
            continue
    else:
        names |= {"model.safetensors", "pytorch_model.bin"}
    return {name: folder / name for name in sorted(names)}


def tokenizer_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for pattern in TOKENIZER_FILES for p in sorted(folder.glob(pattern)) if p.is_file()}


def filter_fingerprint(decoding: dict) -> str | None:
    """The learned filter's file, for a strategy that has a `filter_path` knob; None for the others."""
    if decoding.get("filter_path") is None:
        return None
    from .learn2pd.filter import resolve_filter
    return files_fingerprint({"filter": resolve_filter(decoding["filter_path"])})


@functools.cache
def harness_fingerprint() -> str:
    """The harness's own source (every module: decoding, scoring, task building) and the libraries' versions."""
    return digest_of({"source": source_fingerprint(PACKAGE), **{name: version(name) for name in LIBRARIES}})


def source_fingerprint(package: Path) -> str:
    return digest_of({str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted(package.rglob("*.py"))})


def fingerprints(settings: dict) -> dict:
    from .models.loading import NAMED_MODELS
    path = settings["model"]["path"]
    folder = NAMED_MODELS.get(str(path), Path(str(path)).expanduser())
    return {"data": data_fingerprint(settings["task"]), "model": files_fingerprint(model_files(folder)),
            "tokenizer": files_fingerprint(tokenizer_files(folder)),
            "filter": filter_fingerprint(settings["decoding"]), "harness": harness_fingerprint()}


def cell_identity(settings: dict) -> tuple[str, dict]:
    """The cell's config hash, over its settings and its fingerprints, and the fingerprints."""
    prints = fingerprints(settings)
    return config_hash(settings, prints), prints
