"""The result store finds a complete cell by its hash through the index, and survives what users do to it."""
import json
import shutil

from harness.store import INDEX, find_complete, write_record


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
