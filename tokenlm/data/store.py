"""Variable-length arrays per clip, stored flat: ``{split}.bin`` + ``{split}.index.jsonl``.

One mechanism for log-mel frames (float16, width n_mels) and codes (uint16, width 1): the
bin file is every clip's rows back to back, readable as a memmap (nanoGPT's token file),
and each index line says where a clip's rows start and how many there are, with the clip's
id and label. Memory stays flat whatever the corpus size.

A split may instead be sharded (written by several workers, ``tokenlm.engine``): shards
``{split}-00000.bin``, ``{split}-00001.bin``, ... named in order, with their lengths, by
``{split}.shards.json``, and still ONE ``{split}.index.jsonl`` whose offsets run back to back
across the shards. ``RaggedSplit`` reads either layout the same: its ``.data`` is then a
read-only view joining the shards' memmaps, without a merged copy.

Beside the JSON lines, ``{split}.index.npy`` holds the same offsets and lengths as arrays
(int64, shape (2, clips)): a reader memory-maps it and reads the JSON (ids, labels) only when
asked (``.rows``), so opening a 100k-hour store costs megabytes, not a dict per clip. A store
written before the arrays existed has none: its offsets and lengths come from the JSON.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import read_json, read_jsonl, write_json, write_jsonl


def bin_file(split: str) -> str:
    """A split's flat array file in a store folder (features, tokens)."""
    return f"{split}.bin"


def index_file(split: str) -> str:
    """A split's index (one JSON line per clip: id, label, offset, length) in a store folder."""
    return f"{split}.index.jsonl"


def index_array_file(split: str) -> str:
    """A split's index as arrays (int64 (2, clips): offsets, lengths; ``np.load``-able,
    memory-mapped by readers) beside its JSON lines, which stay for people and tools."""
    return f"{split}.index.npy"


def shard_file(split: str, number: int) -> str:
    """Shard ``number`` of a sharded split's arrays."""
    return f"{split}-{number:05d}.bin"


def shards_file(split: str) -> str:
    """A sharded split's list of shards (file and length, in order)."""
    return f"{split}.shards.json"


class RaggedWriter:
    """Append clips to ``directory/{split}.bin``; ``close()`` writes the index.

    With ``shard`` (a number), the clips go to that shard of a sharded split instead, written
    under a temporary name and renamed on ``close()`` (a retried worker overwrites a shard
    cleanly); its index entries (offsets from the shard's start) stay in ``rows`` for
    ``write_shard_list``, which writes the split's index."""

    def __init__(self, directory: str | Path, split: str, dtype: str, width: int = 1, *, shard: int | None = None):
        self.directory = Path(directory)
        self.split = split
        self.dtype = np.dtype(dtype)
        self.width = width
        self.rows: list[dict] = []
        self.offset = 0
        self._clip_id, self._length = None, 0  # the clip being appended
        self.path = self.directory / (bin_file(split) if shard is None else shard_file(split, shard))
        self._sharded = shard is not None
        self._file = open(self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex}") if self._sharded
                          else self.path, "wb")

    def add(self, row: dict, array: np.ndarray) -> None:
        """Append one clip's rows; ``row`` (id, label, ...) goes to the index with offset/length."""
        self.begin(row.get("id"))
        self.extend(array)
        self.end(row)

    # A long clip arrives in blocks: begin(), extend() per block, then end(row) once its index
    # entry is known (or discard() if it turned out unusable). The bytes equal one add().

    def begin(self, clip_id=None) -> None:
        self._clip_id = clip_id  # named when a value does not fit
        self._length = 0

    def extend(self, array: np.ndarray) -> None:
        """Append rows of the clip begun."""
        if self.dtype.kind in "ui" and np.size(array):  # a cast would wrap out-of-range values silently
            info = np.iinfo(self.dtype)
            low, high = np.min(array), np.max(array)
            if low < info.min or high > info.max:
                raise ValueError(f"values [{low}, {high}] do not fit {self.dtype} (clip {self._clip_id})")
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if self.width > 1 and array.shape[1:] != (self.width,):
            raise ValueError(f"expected rows of width {self.width}, got shape {array.shape}")
        with _naming(self._file.name):
            self._file.write(array.tobytes())
        self._length += array.shape[0]

    def end(self, row: dict) -> None:
        """Close the clip begun: ``row`` goes to the index with its offset and length."""
        self.rows.append({**row, "offset": self.offset, "length": self._length})
        self.offset += self._length

    def discard(self) -> None:
        """Drop the rows of the clip begun, as if it had never been."""
        with _naming(self._file.name):
            self._file.seek(self.offset * self.width * self.dtype.itemsize)
            self._file.truncate()
        self._length = 0

    def close(self) -> None:
        with _naming(self._file.name):
            self._file.close()  # flushes: a full disk can show here
        if self._sharded:
            os.replace(self._file.name, self.path)
        else:
            write_index(self.directory, self.split, self.rows)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            if self._sharded:
                os.unlink(self._file.name)


def close_shards(writers: dict[str, "RaggedWriter"]) -> dict[str, tuple[str, list[dict]]]:
    """Close one block's shard writers (one per split): each split's (shard file name, index
    entries) for ``write_shard_list``; a shard that got no clip is removed."""
    shards = {}
    for split, writer in writers.items():
        writer.close()
        if writer.rows:
            shards[split] = (writer.path.name, writer.rows)
        else:
            writer.path.unlink()
    return shards


def write_shard_list(directory: str | Path, split: str, shards: list[tuple[str, list[dict]]]) -> None:
    """Make ``directory``'s shards of ``split`` one split: ``shards`` is each shard's file name
    and index entries (offsets from the shard's start), in order. Writes the split's index
    (offsets running on across shards) and its shard list."""
    directory = Path(directory)
    listing, offset = [], 0

    def entries():
        nonlocal offset
        for name, rows in shards:
            length = sum(r["length"] for r in rows)
            listing.append({"file": name, "length": length, "clips": len(rows)})
            for row in rows:
                yield {**row, "offset": offset + row["offset"]}
            offset += length

    write_index(directory, split, entries())
    write_json(directory / shards_file(split), {"shards": listing, "length": offset})
    for partial in directory.glob(f".{split}-*.bin.tmp-*"):  # left by a worker that died (its block was rerun)
        partial.unlink()


def write_index(directory: Path, split: str, rows) -> None:
    """A split's index, ``rows`` (entries with offset and length): the arrays first, then the
    JSON lines, so that where the JSON is complete, so are the arrays."""
    rows = list(rows)
    arrays = np.array([[r["offset"] for r in rows], [r["length"] for r in rows]], dtype=np.int64).reshape(2, len(rows))
    array_path = directory / index_array_file(split)
    tmp = array_path.with_name(f".{array_path.name}.tmp-{os.getpid()}")
    with _naming(str(array_path)), open(tmp, "wb") as f:
        np.save(f, arrays)
    os.replace(tmp, array_path)
    write_jsonl(directory / index_file(split), rows)


@contextmanager
def _naming(path: str):
    """Give an OSError of a write to an open file (which names no file) the file's path, so the
    user learns where the disk was full."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None


class RaggedSplit:
    """Read side: ``split[i]`` is clip i's array; ``split.offsets`` / ``split.lengths`` every
    clip's place (int64 arrays, memory-mapped from ``{split}.index.npy``); ``split.rows[i]`` its
    index entry (id, label, ...: the JSON lines, read on first use); ``.data`` every clip's
    rows back to back (a memmap, or a view joining a sharded split's memmaps)."""

    def __init__(self, directory: str | Path, split: str, dtype: str, width: int = 1):
        self.directory = Path(directory)
        self.split = split
        self.width = width
        self._rows = None
        self.offsets, self.lengths = self._index()
        total = int(self.lengths.sum())
        shape = (total, width) if width > 1 else (total,)
        if (self.directory / shards_file(split)).is_file():
            self.data = _read_shards(self.directory, split, np.dtype(dtype), width, total)
            return
        path = self.directory / bin_file(split)
        expected_bytes = total * width * np.dtype(dtype).itemsize
        if not path.is_file() or os.path.getsize(path) != expected_bytes:
            raise ArtifactError(f"{path} is missing or does not match its index (expected {expected_bytes} bytes)")
        # np.memmap refuses empty files, and an empty split is legitimate (e.g. no val clips).
        self.data = np.memmap(path, dtype=dtype, mode="r", shape=shape) if total else np.zeros(shape, dtype)

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and lengths: memory-mapped from the arrays, or (a store from before them)
        taken from the JSON lines, which are then kept as ``rows``."""
        arrays_path = self.directory / index_array_file(self.split)
        if not arrays_path.is_file():
            self._rows = read_jsonl(self.directory / index_file(self.split))
            _check_index(self._rows, self.directory / index_file(self.split))
            return (np.array([r["offset"] for r in self._rows], dtype=np.int64),
                    np.array([r["length"] for r in self._rows], dtype=np.int64))
        try:
            arrays = np.load(arrays_path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{arrays_path} cannot be read ({err}): rebuild the stage") from None
        if arrays.dtype != np.int64 or arrays.ndim != 2 or arrays.shape[0] != 2:
            raise ArtifactError(f"{arrays_path}: not an index (int64 offsets and lengths): rebuild the stage")
        offsets, lengths = arrays[0], arrays[1]
        ends = np.cumsum(lengths)
        if len(lengths) and (lengths.min() < 0 or offsets[0] != 0 or (offsets[1:] != ends[:-1]).any()):
            raise ArtifactError(f"{arrays_path}: its clips do not lie back to back from offset 0: "
                                f"the index is damaged; rebuild the stage")
        return offsets, lengths

    @property
    def rows(self) -> list[dict]:
        """Every clip's index entry (the JSON lines), read once, when first asked for."""
        if self._rows is None:
            path = self.directory / index_file(self.split)
            rows = read_jsonl(path)
            if len(rows) != len(self.offsets):
                raise ArtifactError(f"{path} lists {len(rows)} clips, {index_array_file(self.split)} "
                                    f"{len(self.offsets)}: rebuild the stage")
            self._rows = rows
        return self._rows

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.offsets[i])
        return self.data[start : start + int(self.lengths[i])]

    def __iter__(self):
        for i in range(len(self)):
            yield self.rows[i], self[i]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``.data``, copied by file reads rather than through the memory
        map: pages a memmap touches stay in the process's resident set until it is closed, so
        a pass over a large store through it grows the RSS with the store."""
        parts, starts = (self.data.parts, self.data.starts) if isinstance(self.data, JoinedRows) \
            else ([self.data], [0, len(self.data)])
        pieces = []
        for part, low, high in zip(parts, starts[:-1], starts[1:]):
            a, b = max(start, int(low)), min(stop, int(high))
            if a >= b:
                continue
            row_values = int(np.prod(part.shape[1:], dtype=np.int64))
            with open(part.filename, "rb") as f:
                f.seek(part.offset + (a - int(low)) * row_values * part.dtype.itemsize)
                pieces.append(np.fromfile(f, dtype=part.dtype, count=(b - a) * row_values).reshape(b - a, *part.shape[1:]))
        if not pieces:
            return np.zeros((0, *self.data.shape[1:]), self.data.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    @property
    def labels(self) -> list:
        return [r.get("label") for r in self.rows]

    @property
    def ids(self) -> list:
        return [r.get("id") for r in self.rows]


def _read_shards(directory: Path, split: str, dtype: np.dtype, width: int, total: int) -> "JoinedRows":
    """The memmaps of a sharded split, checked against its shard list and index."""
    listing_path = directory / shards_file(split)
    listing = read_json(listing_path)
    shards = listing.get("shards") if isinstance(listing, dict) else None
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("file"), str)
                                               and isinstance(s.get("length"), int) for s in shards):
        raise ArtifactError(f"{listing_path}: not a shard list (shards: file, length): rebuild the stage")
    if sum(s["length"] for s in shards) != total:
        raise ArtifactError(f"{listing_path}: its shards hold {sum(s['length'] for s in shards)} rows, "
                            f"its index {total}: rebuild the stage")
    parts = []
    for shard in shards:
        path = directory / Path(shard["file"]).name
        expected_bytes = shard["length"] * width * dtype.itemsize
        if not path.is_file() or os.path.getsize(path) != expected_bytes:
            raise ArtifactError(f"{path} is missing or does not match {listing_path.name} "
                                f"(expected {expected_bytes} bytes)")
        if shard["length"]:
            parts.append(np.memmap(path, dtype=dtype, mode="r",
                                   shape=(shard["length"], width) if width > 1 else (shard["length"],)))
    return JoinedRows(parts, dtype, (total, width) if width > 1 else (total,))


class JoinedRows:
    """Arrays joined end to end, read-only, without a copy: what a flat array's readers use
    (len, shape, dtype, slices [a:b] even across parts, an int index, max/min, np.asarray)."""

    def __init__(self, parts: list[np.ndarray], dtype: np.dtype, shape: tuple):
        self.parts = parts
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.ndim = len(shape)
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # part i holds rows starts[i]:starts[i+1]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index = key + len(self) if key < 0 else key
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            part = int(np.searchsorted(self.starts, index, side="right")) - 1
            return self.parts[part][index - self.starts[part]]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("joined shards take an int or a contiguous slice [a:b]")
        start, stop, _ = key.indices(len(self))
        stop = max(start, stop)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        for part in range(max(first, 0), len(self.parts)):
            low, high = self.starts[part], self.starts[part + 1]
            if low >= stop:
                break
            pieces.append(self.parts[part][max(start, low) - low:min(stop, high) - low])
        if len(pieces) == 1:  # within one shard: a view of its memmap
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.zeros((0, *self.shape[1:]), self.dtype)

    def max(self):
        if not len(self):
            raise ValueError("max of no rows")
        return max(p.max() for p in self.parts)

    def min(self):
        if not len(self):
            raise ValueError("min of no rows")
        return min(p.min() for p in self.parts)

    def __array__(self, dtype=None, copy=None):
        joined = np.concatenate(self.parts) if self.parts else np.zeros(self.shape, self.dtype)
        return joined if dtype is None else joined.astype(dtype, copy=False)


def _check_index(rows: list[dict], path: Path) -> int:
    """The number of rows an index describes; its clips must lie back to back from offset 0."""
    offset = 0
    for number, row in enumerate(rows, 1):
        start, length = (row.get("offset"), row.get("length")) if isinstance(row, dict) else (None, None)
        if not (isinstance(start, int) and isinstance(length, int)) or start != offset or length < 0:
            raise ArtifactError(f"{path}, entry {number}: offset {start!r} / length {length!r} where offset "
                                f"{offset} and a length >= 0 belong: the index is damaged; rebuild it")
        offset += length
    return offset


def sample_clips(lengths: np.ndarray, max_rows: int, seed: int = 0) -> np.ndarray:
    """Clip numbers (sorted) of a seeded sample of a split's clips holding at most ``max_rows``
    rows (codes, frames) in all: every clip when they fit, else clips in a seeded random order
    until the next would pass the cap (at least one). What a bounded evaluation reads."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.sum()) <= max_rows:
        return np.arange(len(lengths))
    order = np.random.default_rng(seed).permutation(len(lengths))
    kept = order[np.cumsum(lengths[order]) <= max_rows]
    return np.sort(kept if len(kept) else order[:1])
