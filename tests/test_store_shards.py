"""A split written in shards (by the engine's workers) reads back exactly as the same split
written as one file: rows, every clip, ``.data`` slices across shard boundaries, and what the
LM batches draw from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenlm.core.errors import ArtifactError
from tokenlm.data.store import RaggedSplit, RaggedWriter, close_shards, shard_file, shards_file, write_shard_list
from tokenlm.pipeline.pretrain import PackedClips

# Clips per shard: an empty shard, a clip of no rows, and shards of uneven sizes.
SHARDS = [[3, 0, 5], [], [7], [2, 4, 1, 6]]


def clips(width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (lambda n: (n, width)) if width > 1 else (lambda n: (n,))
    return [rng.integers(0, 1000, shape(n)).astype(np.float16 if width > 1 else np.uint16)
            for n in (n for shard in SHARDS for n in shard)]


def write_both(tmp_path, width: int, dtype: str):
    """The same clips as one file (tmp_path/single) and in SHARDS (tmp_path/sharded)."""
    arrays = clips(width)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    single.mkdir()
    sharded.mkdir()
    with RaggedWriter(single, "train", dtype, width) as writer:
        for i, array in enumerate(arrays):
            writer.add({"id": f"c{i}", "label": i % 2}, array)
    shards, clip = [], 0
    for number, sizes in enumerate(SHARDS):
        writer = RaggedWriter(sharded, "train", dtype, width, shard=number)
        for _ in sizes:
            writer.add({"id": f"c{clip}", "label": clip % 2}, arrays[clip])
            clip += 1
        shards += close_shards({"train": writer}).values()
    write_shard_list(sharded, "train", shards)
    return arrays, RaggedSplit(single, "train", dtype, width), RaggedSplit(sharded, "train", dtype, width)


@pytest.mark.parametrize("width, dtype", [(1, "uint16"), (3, "float16")])
def test_sharded_split_reads_like_one_file(tmp_path, width, dtype):
    arrays, single, sharded = write_both(tmp_path, width, dtype)
    assert (tmp_path / "single" / "train.index.jsonl").read_bytes() == (tmp_path / "sharded" / "train.index.jsonl").read_bytes()
    assert sharded.rows == single.rows and len(sharded) == len(arrays)
    for i, array in enumerate(arrays):
        np.testing.assert_array_equal(sharded[i], array)
        np.testing.assert_array_equal(sharded[i], single[i])
    total = len(single.data)
    assert len(sharded.data) == total and sharded.data.shape == single.data.shape
    for start, stop in [(0, total), (1, 9), (2, 3), (7, 16), (15, 16), (5, 5), (20, 100), (0, 0)]:
        np.testing.assert_array_equal(sharded.data[start:stop], single.data[start:stop])
    assert sharded.data[total - 1].tolist() == single.data[total - 1].tolist()
    assert sharded.data.max() == single.data.max() and sharded.data.min() == single.data.min()
    np.testing.assert_array_equal(np.asarray(sharded.data), np.asarray(single.data))
    np.testing.assert_array_equal(np.array(sharded.data, dtype=np.float32), np.array(single.data, dtype=np.float32))
    listing = json.loads((tmp_path / "sharded" / shards_file("train")).read_text())
    assert [s["file"] for s in listing["shards"]] == [shard_file("train", n) for n in (0, 2, 3)]  # 1 held no clip
    assert not (tmp_path / "sharded" / shard_file("train", 1)).exists()


def test_lm_batches_are_the_same_from_shards(tmp_path):
    _, single, sharded = write_both(tmp_path, 1, "uint16")
    draw = [PackedClips(split, bos=1000, context=6)(np.random.default_rng(3), 8) for split in (single, sharded)]
    for a, b in zip(*draw):
        assert a.tolist() == b.tolist()


def test_empty_sharded_split(tmp_path):
    write_shard_list(tmp_path, "val", [])
    split = RaggedSplit(tmp_path, "val", "float16", width=4)
    assert len(split) == 0 and len(split.data) == 0 and np.asarray(split.data).shape == (0, 4)


def test_damaged_shard_is_one_line(tmp_path):
    write_both(tmp_path, 1, "uint16")
    shard = tmp_path / "sharded" / shard_file("train", 2)
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ArtifactError, match="train-00002.bin is missing or does not match") as err:
        RaggedSplit(tmp_path / "sharded", "train", "uint16")
    assert "\n" not in str(err.value)


def test_failed_shard_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with RaggedWriter(tmp_path, "train", "uint16", shard=0) as writer:
            writer.add({"id": "a"}, np.arange(4))
            raise RuntimeError("worker failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_index_arrays_equal_the_json_index(tmp_path, layout):
    """{split}.index.npy holds the JSON lines' offsets and lengths, in their order, for one file
    and for shards; a reader takes them from the arrays without reading the JSON."""
    arrays, *_ = write_both(tmp_path, 1, "uint16")
    folder = tmp_path / layout
    rows = [json.loads(line) for line in (folder / "train.index.jsonl").read_text().splitlines()]
    index = np.load(folder / "train.index.npy")
    assert index.dtype == np.int64 and index.shape == (2, len(arrays))
    assert index[0].tolist() == [r["offset"] for r in rows]
    assert index[1].tolist() == [r["length"] for r in rows] == [len(a) for a in arrays]
    split = RaggedSplit(folder, "train", "uint16")
    assert split._rows is None  # opened on the arrays alone: the JSON is read when rows are asked for
    for i, array in enumerate(arrays):
        np.testing.assert_array_equal(split[i], array)
    assert split._rows is None and split.ids == [f"c{i}" for i in range(len(arrays))]


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_a_store_without_index_arrays_still_reads(tmp_path, layout):
    """A store written before the arrays existed (JSON lines only) reads as before."""
    arrays, *_ = write_both(tmp_path, 3, "float16")
    (tmp_path / layout / "train.index.npy").unlink()
    split = RaggedSplit(tmp_path / layout, "train", "float16", 3)
    assert len(split) == len(arrays) and split.labels == [i % 2 for i in range(len(arrays))]
    assert split.lengths.tolist() == [len(a) for a in arrays]
    for i, array in enumerate(arrays):
        np.testing.assert_array_equal(split[i], array)


def test_damaged_index_arrays_are_said_in_one_line(tmp_path):
    write_both(tmp_path, 1, "uint16")
    folder = tmp_path / "single"
    index = np.load(folder / "train.index.npy")
    index[0, 2] += 1  # a clip that no longer starts where the one before ends
    np.save(folder / "train.index.npy", index)
    with pytest.raises(ArtifactError, match="back to back"):
        RaggedSplit(folder, "train", "uint16")
    np.save(folder / "train.index.npy", index[:, :3].copy())  # fewer clips than the JSON lines
    with pytest.raises(ArtifactError):
        RaggedSplit(folder, "train", "uint16")
