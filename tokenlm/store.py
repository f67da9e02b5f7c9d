"""Variable-length arrays per clip, stored flat: ``{split}.bin`` + ``{split}.index.jsonl``.

One mechanism for log-mel frames (float16, width n_mels) and codes (uint16, width 1): the
bin file is every clip's rows back to back, readable as a memmap (nanoGPT's token file),
and each index line says where a clip's rows start and how many there are, with the clip's
id and label. Memory stays flat whatever the corpus size.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tokenlm.errors import ArtifactError
from tokenlm.fileio import read_jsonl, write_jsonl
from tokenlm.rundir import bin_file, index_file


class RaggedWriter:
    """Append clips to ``directory/{split}.bin``; ``close()`` writes the index."""

    def __init__(self, directory: str | Path, split: str, dtype: str, width: int = 1):
        self.directory = Path(directory)
        self.split = split
        self.dtype = np.dtype(dtype)
        self.width = width
        self.rows: list[dict] = []
        self.offset = 0
        self._clip_id, self._length = None, 0  # the clip being appended
        self._file = open(self.directory / bin_file(split), "wb")

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
        write_jsonl(self.directory / index_file(self.split), self.rows)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self._file.close()


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
    """Read side: ``split[i]`` is clip i's array, ``split.rows[i]`` its index entry."""

    def __init__(self, directory: str | Path, split: str, dtype: str, width: int = 1):
        self.directory = Path(directory)
        self.split = split
        self.width = width
        self.rows = read_jsonl(self.directory / index_file(split))
        path = self.directory / bin_file(split)
        total = _check_index(self.rows, self.directory / index_file(split))
        expected_bytes = total * width * np.dtype(dtype).itemsize
        if not path.is_file() or os.path.getsize(path) != expected_bytes:
            raise ArtifactError(f"{path} is missing or does not match its index (expected {expected_bytes} bytes)")
        shape = (total, width) if width > 1 else (total,)
        # np.memmap refuses empty files, and an empty split is legitimate (e.g. no val clips).
        self.data = np.memmap(path, dtype=dtype, mode="r", shape=shape) if total else np.zeros(shape, dtype)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        row = self.rows[i]
        return self.data[row["offset"] : row["offset"] + row["length"]]

    def __iter__(self):
        for i in range(len(self)):
            yield self.rows[i], self[i]

    @property
    def labels(self) -> list:
        return [r.get("label") for r in self.rows]


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
