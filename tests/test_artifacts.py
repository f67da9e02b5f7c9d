"""Run-directory mechanics: stage folders that skip, rebuild and survive interruption; atomic
JSON; ragged arrays stored flat."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import file_hash, fingerprint, read_json, read_jsonl, write_json, write_jsonl
from tokenlm.data.store import RaggedSplit, RaggedWriter
from tokenlm.run import artifacts
from tokenlm.run.artifacts import STAGE_FILE, Stage, read_stage, stage_key


def test_fingerprint_ignores_key_order_and_sees_values():
    a = fingerprint({"x": 1, "y": [1, 2], "z": {"p": 0.5, "q": None}})
    assert a == fingerprint({"z": {"q": None, "p": 0.5}, "y": [1, 2], "x": 1})
    assert a != fingerprint({"x": 1, "y": [2, 1], "z": {"p": 0.5, "q": None}})
    assert a != fingerprint({"x": 1.5, "y": [1, 2], "z": {"p": 0.5, "q": None}})
    assert len(a) == 16 and int(a, 16) >= 0


def test_file_hash_follows_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    first = file_hash(path)
    assert file_hash(path, chunk_size=7) == first  # chunking does not matter
    path.write_bytes(b"abc" * 999 + b"abd")
    assert file_hash(path) != first


# ---- JSON --------------------------------------------------------------------------------

def test_write_json_round_trip_and_no_temp_file_left(tmp_path):
    path = tmp_path / "meta.json"
    write_json(path, {"a": 1, "path": tmp_path, "t": (1, 2)})  # default=str for Paths
    assert read_json(path) == {"a": 1, "path": str(tmp_path), "t": [1, 2]}
    assert os.listdir(tmp_path) == ["meta.json"]


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    write_json(path, {"version": 1})
    seen = {}
    real_replace = os.replace

    def replace_and_look(src, dst):
        # at the moment of the swap, the target still holds the complete old file and the
        # temporary file holds the complete new one
        seen["old"] = json.loads(open(dst).read())
        seen["new"] = json.loads(open(src).read())
        real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", replace_and_look)
    write_json(path, {"version": 2, "big": list(range(10000))})
    assert seen["old"] == {"version": 1} and seen["new"]["version"] == 2

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"version": 3})
    assert read_json(path)["version"] == 2  # a reader never sees a half-written file


def test_read_json_errors(tmp_path):
    with pytest.raises(ArtifactError, match="missing file"):
        read_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_jsonl_round_trip(tmp_path):
    rows = [{"id": "a", "n": 1}, {"id": "b", "n": None}, {}]
    write_jsonl(tmp_path / "x.jsonl", rows)
    assert read_jsonl(tmp_path / "x.jsonl") == rows
    write_jsonl(tmp_path / "empty.jsonl", [])
    assert read_jsonl(tmp_path / "empty.jsonl") == []
    with pytest.raises(ArtifactError):
        read_jsonl(tmp_path / "missing.jsonl")


# ---- stages ------------------------------------------------------------------------------

def build(run, config, inputs=None, payload="x"):
    stage = Stage(run / "thing", config=config, inputs=inputs)
    work = stage.start()
    (work / "payload.txt").write_text(payload)
    stage.finish(extra={"note": "hi"})
    return stage


def test_stage_finish_writes_stage_json_and_moves_into_place(tmp_path):
    stage = Stage(tmp_path / "run" / "thing", config={"k": 8}, inputs={"features": "abc"})
    assert not stage.done
    work = stage.start()
    assert work.is_dir() and not stage.out_dir.exists()
    (work / "payload.txt").write_text("data")
    out = stage.finish(extra={"clips": 3})
    assert out == stage.out_dir and stage.done
    assert (out / "payload.txt").read_text() == "data"
    record = read_json(out / STAGE_FILE)
    assert record["key"] == stage.key and record["config"] == {"k": 8}
    assert record["inputs"] == {"features": "abc"} and record["clips"] == 3
    assert {"torch", "numpy", "python", "tokenlm"} <= set(record["versions"])
    assert record["wall_time_s"] >= 0 and record["stage"] == "thing"
    assert stage_key(out) == stage.key
    # nothing but the finished folder is left behind (no work folder, no key file)
    assert sorted(os.listdir(tmp_path / "run")) == ["thing"]
    assert sorted(os.listdir(out)) == ["payload.txt", STAGE_FILE]


def test_same_config_and_inputs_skip_any_change_rebuilds(tmp_path):
    build(tmp_path, {"k": 8, "layers": [1, 2]}, {"data": "h1"})
    assert Stage(tmp_path / "thing", {"layers": [1, 2], "k": 8}, {"data": "h1"}).done
    assert not Stage(tmp_path / "thing", {"k": 16, "layers": [1, 2]}, {"data": "h1"}).done
    assert not Stage(tmp_path / "thing", {"k": 8, "layers": [1, 2]}, {"data": "h2"}).done
    assert not Stage(tmp_path / "thing", {"k": 8, "layers": [1, 2]}).done

    build(tmp_path, {"k": 16, "layers": [1, 2]}, {"data": "h1"}, payload="new")
    assert (tmp_path / "thing" / "payload.txt").read_text() == "new"
    assert not Stage(tmp_path / "thing", {"k": 8, "layers": [1, 2]}, {"data": "h1"}).done
    assert sorted(os.listdir(tmp_path)) == ["thing"]  # the old folder went as a whole


def test_interrupted_work_never_looks_done_and_resumes_for_the_same_key(tmp_path):
    stage = Stage(tmp_path / "thing", config={"k": 8})
    work = stage.start()
    (work / "checkpoint.pt").write_text("step 100")
    # ... interrupted: no finish()
    again = Stage(tmp_path / "thing", config={"k": 8})
    assert not again.done and not again.out_dir.exists()
    with pytest.raises(ArtifactError, match="missing or incomplete"):
        read_stage(again.out_dir, hint="tokenlm thing")
    work = again.start()
    assert (work / "checkpoint.pt").read_text() == "step 100"  # same key: kept, so it resumes


def test_interrupted_work_is_wiped_for_a_different_key(tmp_path):
    work = Stage(tmp_path / "thing", config={"k": 8}).start()
    (work / "checkpoint.pt").write_text("step 100 of k=8")
    other = Stage(tmp_path / "thing", config={"k": 16})
    work = other.start()
    assert not (work / "checkpoint.pt").exists()
    other.finish()
    assert other.done and not Stage(tmp_path / "thing", config={"k": 8}).done


def test_work_folder_without_key_file_is_neither_trusted_nor_deleted(tmp_path):
    stage = Stage(tmp_path / "thing", config={"k": 8})
    stage.work_dir.mkdir(parents=True)
    (stage.work_dir / "stale.txt").write_text("from an unknown run")
    with pytest.raises(ArtifactError, match="not made by tokenlm"):
        stage.start()
    assert (stage.work_dir / "stale.txt").read_text() == "from an unknown run"


def test_interrupted_rebuild_keeps_the_old_finished_output(tmp_path):
    build(tmp_path, {"k": 8}, payload="k8")
    new = Stage(tmp_path / "thing", config={"k": 16})
    (new.start() / "payload.txt").write_text("half of k16")
    # interrupted before finish(): the k=8 output is intact and still counts as done
    assert Stage(tmp_path / "thing", config={"k": 8}).done
    assert (tmp_path / "thing" / "payload.txt").read_text() == "k8"
    assert not Stage(tmp_path / "thing", config={"k": 16}).done


def test_unreadable_stage_json_is_not_done(tmp_path):
    stage = build(tmp_path, {"k": 8})
    (stage.out_dir / STAGE_FILE).write_text("{ truncated")
    assert not Stage(tmp_path / "thing", {"k": 8}).done


def test_finish_before_start_is_an_error(tmp_path):
    with pytest.raises(RuntimeError):
        Stage(tmp_path / "thing", config={}).finish()


# ---- ragged arrays -----------------------------------------------------------------------

def test_ragged_round_trip_with_width(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 4)).astype(np.float32) for n in (3, 0, 7, 1)]
    with RaggedWriter(tmp_path, "train", "float16", width=4) as writer:
        for i, a in enumerate(arrays):
            writer.add({"id": f"c{i}", "label": f"l{i % 2}"}, a)
    split = RaggedSplit(tmp_path, "train", "float16", width=4)
    assert len(split) == 4 and split.labels == ["l0", "l1", "l0", "l1"]
    assert [r["offset"] for r in split.rows] == [0, 3, 3, 10]
    assert [r["length"] for r in split.rows] == [3, 0, 7, 1]
    for i, (row, got) in enumerate(split):
        assert row["id"] == f"c{i}" and got.shape == (len(arrays[i]), 4) and got.dtype == np.float16
        np.testing.assert_array_equal(got, arrays[i].astype(np.float16))
    assert os.path.getsize(tmp_path / "train.bin") == 11 * 4 * 2


def test_ragged_codes_width_one(tmp_path):
    with RaggedWriter(tmp_path, "val", "uint16") as writer:
        writer.add({"id": "a"}, np.array([1, 2, 65535]))
        writer.add({"id": "b"}, np.array([7]))
    split = RaggedSplit(tmp_path, "val", "uint16")
    assert split.data.shape == (4,)
    np.testing.assert_array_equal(split[0], [1, 2, 65535])
    np.testing.assert_array_equal(split[1], [7])


def test_ragged_empty_split(tmp_path):
    RaggedWriter(tmp_path, "test", "float16", width=8).close()
    split = RaggedSplit(tmp_path, "test", "float16", width=8)
    assert len(split) == 0 and list(split) == [] and split.data.shape == (0, 8)


def test_ragged_size_mismatch_and_missing_file_are_errors(tmp_path):
    with RaggedWriter(tmp_path, "train", "float16", width=2) as writer:
        writer.add({"id": "a"}, np.zeros((5, 2)))
    with open(tmp_path / "train.bin", "ab") as f:
        f.write(b"\0\0")  # one stray value
    with pytest.raises(ArtifactError, match="does not match its index"):
        RaggedSplit(tmp_path, "train", "float16", width=2)
    with pytest.raises(ArtifactError, match="does not match its index"):
        RaggedSplit(tmp_path, "train", "float32", width=2)  # read with the wrong dtype
    (tmp_path / "train.bin").unlink()
    with pytest.raises(ArtifactError):
        RaggedSplit(tmp_path, "train", "float16", width=2)
    with pytest.raises(ArtifactError):
        RaggedSplit(tmp_path, "val", "float16", width=2)  # no index at all


def test_ragged_writer_rejects_wrong_width_and_writes_no_index_on_error(tmp_path):
    with pytest.raises(ValueError, match="width 4"):
        with RaggedWriter(tmp_path, "train", "float16", width=4) as writer:
            writer.add({"id": "a"}, np.zeros((2, 4)))
            writer.add({"id": "b"}, np.zeros((2, 3)))
    assert not (tmp_path / "train.index.jsonl").exists()
