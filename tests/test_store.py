"""The result store finds a complete cell by its hash through the index, and survives what users do to it;
a cell's identity covers what it read (data, weights, tokenizer, filter, harness); collect survives
damaged stores and failed cells."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from analysis.collect import collect, collect_and_report
from harness import fingerprints
from harness import store as store_module
from harness.fingerprints import cell_identity, file_digest
from harness.run import baseline_settings, cell_settings, run_cell
from harness.store import INDEX, find_complete, write_record

from .conftest import REPO
from .test_sweep import composed, settings_for

TINY = REPO / "harness" / "assets" / "tiny-llada"


def record(digest: str, status: str = "complete") -> dict:
    return {"config_hash": digest, "status": status, "metrics": {"acc": 0.5}}


def test_index_finds_complete_records_only(tmp_path):
    store = tmp_path / "store"
    write_record(store / "a", record("aaaa"), [{"doc_id": 0}], store)
    write_record(store / "b", record("bbbb", status="failed"), None, store)
    found = find_complete(store, "aaaa")
    assert found["metrics"] == {"acc": 0.5} and found["path"] == str(store / "a")
    assert find_complete(store, "bbbb") is None and find_complete(store, "cccc") is None
    assert not (store / INDEX / "bbbb").exists()


def test_a_store_without_index_is_indexed_once_and_a_moved_store_still_resolves(tmp_path):
    store = tmp_path / "old"
    for name, digest in (("x", "1111"), ("y/z", "2222")):  # written by hand or by an older version
        (store / name).mkdir(parents=True)
        (store / name / "result.json").write_text(json.dumps(record(digest)))
    assert find_complete(store, "2222")["path"] == str(store / "y/z")
    assert (store / INDEX / "1111").exists()
    moved = tmp_path / "moved"
    shutil.move(store, moved)
    assert find_complete(moved, "1111")["path"] == str(moved / "x")


def test_a_replaced_or_removed_record_is_not_found(tmp_path):
    store = tmp_path / "store"
    write_record(store / "a", record("aaaa"), None, store)
    (store / "a" / "result.json").write_text(json.dumps(record("other")))  # the folder now holds another cell
    assert find_complete(store, "aaaa") is None
    shutil.rmtree(store / "a")
    assert find_complete(store, "aaaa") is None


# --- a cell knows what it measured ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One real learned cell and the baseline it is paired with, run through the Hydra config into a store."""
    root = tmp_path_factory.mktemp("finished")
    settings = settings_for(root, "task=arith", "decoding=learned")
    assert run_cell(settings, root / "store" / "cell", "cpu")["status"] == "complete"
    return settings, root / "store"


def copied(finished, tmp_path) -> tuple[dict, object]:
    settings, store = finished
    shutil.copytree(store, tmp_path / "store")
    return {**settings, "store": str(tmp_path / "store")}, tmp_path / "store"


def test_records_carry_their_fingerprints_and_the_baseline_is_paired_by_the_same(finished):
    settings, store = finished
    cell = json.loads((store / "cell" / "result.json").read_text())
    assert (cell["config_hash"], cell["fingerprints"]) == cell_identity(settings)
    assert set(cell["fingerprints"]) == {"data", "model", "tokenizer", "filter", "harness"}
    base_hash, base_prints = cell_identity(baseline_settings(settings))
    baseline = json.loads((store / "baselines" / base_hash / "result.json").read_text())
    assert cell["baseline_hash"] == base_hash and baseline["fingerprints"] == base_prints
    assert base_prints == {**cell["fingerprints"], "filter": None}  # the baseline reads no filter


def test_editing_the_data_reruns_the_cell_and_unchanged_data_skips_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_HARNESS_DATA", str(tmp_path / "data"))  # the synthetic splits are written here
    settings = settings_for(tmp_path, "task=arith")
    first = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert first["status"] == "complete" and "path" not in first
    assert run_cell(settings, tmp_path / "store" / "cell", "cpu")["path"] == str(tmp_path / "store" / "cell")

    test_file = tmp_path / "data" / "synthetic" / "arith" / "test.jsonl"
    problems = [json.loads(line) for line in test_file.read_text().splitlines()]
    problems[0]["meta"]["target"] += 1  # a fixed answer key
    test_file.write_text("".join(json.dumps(p) + "\n" for p in problems))
    edited = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert edited["status"] == "complete" and "path" not in edited  # ran again
    assert edited["config_hash"] != first["config_hash"]
    assert edited["fingerprints"] == {**first["fingerprints"], "data": edited["fingerprints"]["data"]}
    again = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert again["config_hash"] == edited["config_hash"] and "path" in again  # skipped


def test_weights_tokenizer_filter_and_harness_source_each_change_the_identity(tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    settings = cell_settings(composed(f"store={tmp_path}", f"model.path={model}", "decoding=learned",
                                      f"decoding.filter_path={model / 'filter.safetensors'}"), "cpu")
    plain = cell_settings(composed(f"store={tmp_path}", f"model.path={model}", "decoding=threshold"), "cpu")

    def changed_by(edit) -> set[str]:
        (digest, before), plain_before = cell_identity(settings), cell_identity(plain)
        edit()
        after = cell_identity(settings)
        assert after[0] != digest and cell_identity(settings) == after  # changed, then stable
        changed = {k for k in before if before[k] != after[1][k]}
        if "filter" in changed:
            assert cell_identity(plain) == plain_before  # a strategy without a filter does not read it
        return changed

    def new_weights():
        tensors = load_file(model / "model.safetensors")
        name = next(iter(tensors))
        tensors[name].view(-1)[0] += 1.0
        save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})

    def new_tokenizer():
        config = json.loads((model / "tokenizer_config.json").read_text())
        (model / "tokenizer_config.json").write_text(json.dumps(config | {"model_max_length": 64}))

    def new_filter():
        tensors = load_file(model / "filter.safetensors")
        with safe_open(model / "filter.safetensors", framework="pt") as f:
            metadata = f.metadata()
        save_file({k: v + 0.5 for k, v in tensors.items()}, model / "filter.safetensors", metadata=metadata)

    package = tmp_path / "package"
    shutil.copytree(fingerprints.PACKAGE, package, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    monkeypatch.setattr(fingerprints, "PACKAGE", package)
    fingerprints.harness_fingerprint.cache_clear()

    def new_harness():
        (package / "decoding" / "engine.py").write_text((package / "decoding" / "engine.py").read_text() + "\n# x\n")
        fingerprints.harness_fingerprint.cache_clear()

    try:
        assert changed_by(new_weights) == {"model"}
        assert changed_by(new_tokenizer) == {"tokenizer"}
        assert changed_by(new_filter) == {"filter"}
        assert changed_by(new_harness) == {"harness"}
    finally:
        fingerprints.harness_fingerprint.cache_clear()


def test_a_large_file_is_hashed_once_and_a_replaced_one_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_HARNESS_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprints, "CACHED_FROM", 0)  # every file counts as large
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    assert file_digest(weights) == hashlib.sha256(b"a" * 1000).hexdigest()
    cached = json.loads(fingerprints.cache_file().read_text())[str(weights)]
    assert cached["stamp"][0] == 1000 and cached["sha256"] == hashlib.sha256(b"a" * 1000).hexdigest()

    with monkeypatch.context() as m:  # the second look is one stat: the content is not read again
        m.setattr(fingerprints, "_sha256", lambda path: pytest.fail("read again although unchanged"))
        assert file_digest(weights) == cached["sha256"]
    (tmp_path / "new").write_bytes(b"b" * 1000)  # same size, replaced as a download or copy would
    os.replace(tmp_path / "new", weights)
    assert file_digest(weights) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert file_digest(tmp_path / "absent") is None


# --- the store under faults ----------------------------------------------------------------------------------

class Killed(BaseException):
    pass


@pytest.mark.parametrize("writes_done", [0, 1, 2, 3])
def test_a_kill_at_any_write_leaves_a_complete_record_findable(tmp_path, monkeypatch, writes_done):
    store = tmp_path / "store"
    write_record(store / "other", record("bbbb"), None, store)
    assert find_complete(store, "bbbb")  # an indexed store: a missing entry is not looked for by a scan
    done, write = [], store_module.write_atomic

    def killed_after(path, text):  # the writer dies after `writes_done` of its atomic writes
        if len(done) == writes_done:
            raise Killed
        done.append(path.name)
        write(path, text)
    monkeypatch.setattr(store_module, "write_atomic", killed_after)
    try:
        write_record(store / "a", record("aaaa"), [{"doc_id": 0}], store)
    except Killed:
        pass
    monkeypatch.undo()
    on_disk = store_module.read_record(store / "a" / "result.json")
    assert (find_complete(store, "aaaa") is not None) == (on_disk is not None and on_disk["status"] == "complete")
    assert done == ["samples.jsonl", "aaaa", "result.json"][:writes_done]  # the index entry before the record


def test_a_complete_record_the_index_misses_is_found_in_its_folder(finished, tmp_path):
    """Written by an older version killed before indexing, or a cell folder copied in."""
    settings, store = copied(finished, tmp_path)
    digest = json.loads((store / "cell" / "result.json").read_text())["config_hash"]
    (store / INDEX / digest).unlink()
    found = run_cell(settings, store / "cell", "cpu")
    assert found["path"] == str(store / "cell")  # skipped, not run again
    assert (store / INDEX / digest).read_text() == "cell"  # and the index repaired


def test_temporary_files_of_killed_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    store = tmp_path / "store"
    for folder in (store / "a", store / INDEX):
        folder.mkdir(parents=True)
        (folder / f".result.json.{dead}.tmp").write_text('{"status": "comp')
        (folder / f".samples.jsonl.{os.getpid()}.tmp").write_text("")  # a live writer's: kept
    write_record(store / "a", record("aaaa"), None, store)
    assert sorted(p.name for p in (store / "a").iterdir()) == [f".samples.jsonl.{os.getpid()}.tmp", "result.json"]
    (store / INDEX / ".built").unlink(missing_ok=True)
    find_complete(store, "aaaa")  # rebuilding the index sweeps the store
    assert not (store / INDEX / f".result.json.{dead}.tmp").exists()
    assert (store / INDEX / f".samples.jsonl.{os.getpid()}.tmp").exists()


DISK_FULL = """
import errno, pathlib, runpy, sys
write_text = pathlib.Path.write_text
def full(self, *args, **kwargs):  # the store's own writes (temporary file, then rename) find the disk full
    if self.name.endswith(".tmp"):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    return write_text(self, *args, **kwargs)
pathlib.Path.write_text = full
runpy.run_module("harness", run_name="__main__")
"""


def test_a_full_disk_ends_the_app_with_one_line_naming_the_store(tmp_path):
    store = tmp_path / "store"
    run = subprocess.run([sys.executable, "-c", DISK_FULL, "task=gsm8k", f"task.data_dir={tmp_path}",
                          "tracking=disabled", f"store={store}"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the store {store} is full (No space left on device"), last
    assert not list(store.rglob("*.tmp"))


# --- analysis of a damaged store -----------------------------------------------------------------------------

def test_collect_skips_a_corrupt_samples_file_naming_it(finished, tmp_path):
    _, store = copied(finished, tmp_path)
    samples = store / "cell" / "samples.jsonl"
    samples.write_text(samples.read_text()[:-40])  # cut mid-line, as a copy interrupted part-way
    got = collect([store])
    assert len(got.cells) == 2 and set(got.samples.path) == {str(next((store / "baselines").iterdir()))}
    assert got.problems == [f"{samples}: unreadable (truncated: its last line is cut short); the cell is kept "
                            "without its samples"]
    samples.write_text('{"doc_id": 0}\nnot json\n')
    assert str(samples) in collect([store]).problems[0] and "Expecting value" in collect([store]).problems[0]


def test_collect_counts_a_copied_cell_once(finished, tmp_path):
    _, store = copied(finished, tmp_path)
    shutil.copytree(store / "cell", store / "cell_copy")
    got = collect([store, store / "cell"])  # overlapping folders find the same record twice: read once
    digest = json.loads((store / "cell" / "result.json").read_text())["config_hash"]
    assert len(got.cells) == 2 and got.cells.config_hash.is_unique
    assert got.cells.set_index("config_hash").loc[digest, "path"] == str(store / "cell")  # the first found
    assert got.problems == [f"{store / 'cell_copy' / 'result.json'}: duplicate of {store / 'cell' / 'result.json'} "
                            f"(config hash {digest}), not counted"]
    assert len(got.samples) == 2 * 4  # each cell's 4 samples once


def test_a_missing_folder_is_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    assert collect([missing]).problems == [f"{missing}: no such folder"]
    with pytest.raises(SystemExit, match=f"^error: no such folder: {missing}$"):
        collect_and_report([missing])

