"""Files written so that readers and crashes never see half of one: atomic, fsynced writes
of JSON and JSONL (a temporary file renamed into place, its folder synced), their readers
with one-line errors for a damaged file, and the hashes that name content (fingerprints of
configs, sha256 of files).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokenlm.core.errors import ArtifactError


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex), read in chunks: memory stays flat for any size."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Short sha256 of a file's bytes (stage records)."""
    return sha256_file(path, chunk_size)[:16]


def fsync_file(path: str | Path) -> None:
    """Flush a file's bytes to the disk (before a rename publishes it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path) -> None:
    """Rename a complete, flushed temporary file onto ``path``, durably."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically and durably: readers see the old file or the new one, never half
    of one, even after a power cut."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _naming(path), open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _publish(tmp, path)


@contextmanager
def _naming(path: Path):
    """A write error (disk full, file too large) raised by write() or fsync() carries no file
    name; give it the path being written, so the user's one line says where."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None


def write_text(path: str | Path, text: str) -> bool:
    """Write a text file atomically and durably, unless it already holds exactly ``text`` (a
    summary rebuilt from unchanged results is left untouched). Returns whether it wrote."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _naming(path), open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _publish(tmp, path)
    return True


def write_jsonl(path: str | Path, rows) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _naming(path), open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _publish(tmp, path)


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing file: {path}")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:  # e.g. a file cut short by a crash or a full disk
                raise ArtifactError(f"{path}, line {number}: not valid JSON ({err.msg}): the file is damaged; "
                                    f"rebuild it") from None
    return rows



def os_error_of(err: Exception, path: str | Path | None = None) -> Exception:
    """safetensors reports a failed write (a full disk, a file size limit) as a SafetensorError
    ending "(os error 28)": the OSError it stands for (naming ``path``), so the command says
    it in one line (tokenlm.cli); any other error as it is."""
    if isinstance(err, OSError):
        return err
    code = re.search(r"\(os error (\d+)\)", str(err))
    if code is None:
        return err
    number = int(code[1])
    return OSError(number, os.strerror(number), None if path is None else str(path))
