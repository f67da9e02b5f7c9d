"""A member of an uncompressed tar file as an input file, read in place: never extracted, and
never more of the tar read than the member's own bytes.

A member is named by one string, so a clip's ``path`` names it in every record (the run's
manifest, skip reasons, stamps) and decodes again from there::

    /data/shards/train-000003.tar#3584+52044/dog/clip-17.flac
    TAR (absolute)               #OFFSET+SIZE/MEMBER NAME

OFFSET and SIZE are the member's data bytes in the tar, found once when the shard is scanned
(``tokenlm.data.webdataset``): decoding seeks there, without reading the tar's headers again. The
tar's stamp (``input_files.file_stamp``) guarantees the range still holds that member.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

_MEMBER = re.compile(r"(?P<tar>.+?\.[tT][aA][rR])#(?P<offset>\d+)\+(?P<size>\d+)/(?P<name>.+)", re.DOTALL)


@dataclass(frozen=True)
class TarMember:
    """``size`` bytes at ``offset`` of the tar file ``tar``: the data of its member ``name``."""

    tar: str
    offset: int
    size: int
    name: str

    def __str__(self) -> str:  # the path that names it in records; ``parse`` reads it back
        return f"{self.tar}#{self.offset}+{self.size}/{self.name}"

    @classmethod
    def parse(cls, path) -> TarMember | None:
        """The member a path string names, or None for a path of an ordinary file."""
        if isinstance(path, TarMember):
            return path
        match = _MEMBER.fullmatch(str(path))
        if match is None:
            return None
        return cls(match["tar"], int(match["offset"]), int(match["size"]), match["name"])

    @contextmanager
    def open(self) -> Iterator[MemberFile]:
        """The member's bytes as a seekable binary file. Raises OSError when the tar cannot be
        read or is now shorter than the member (truncated or replaced since it was scanned)."""
        with open(self.tar, "rb", buffering=0) as tar:
            if os.fstat(tar.fileno()).st_size < self.offset + self.size:
                raise OSError("the tar ends before the member: changed since it was scanned?")
            yield MemberFile(tar, self.offset, self.size)

    def sha256(self, chunk_size: int = 1 << 20) -> str:
        """sha256 of the member's bytes (hex), read in chunks."""
        digest = hashlib.sha256()
        with self.open() as f:
            while block := f.read(chunk_size):
                digest.update(block)
        return digest.hexdigest()


class MemberFile(io.RawIOBase):
    """``size`` bytes at ``offset`` of an open binary file, as a read-only file of their own
    (what soundfile's virtual I/O reads). Reads never go past the member's end."""

    def __init__(self, file, offset: int, size: int):
        super().__init__()
        self._file, self._offset, self._size, self._position = file, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + position < 0:
            raise ValueError(f"negative seek position {base + position}")
        self._position = base + position
        return self._position

    def readinto(self, buffer) -> int:
        # Called by soundfile from C: an exception here would be printed, not raised, so a
        # short tar simply reads short and decoding says the file is damaged.
        count = max(0, min(len(buffer), self._size - self._position))
        if count == 0:
            return 0
        self._file.seek(self._offset + self._position)
        read = self._file.readinto(memoryview(buffer).cast("B")[:count]) or 0
        self._position += read
        return read
