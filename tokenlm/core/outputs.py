"""The one rule for everything tokenlm writes outside its own stage folders: a run's
recipe.yaml, manifest.jsonl and report.md/html, and export folders (RUN/export/..., ``--out``).

- Written under a temporary name and renamed into place, flushed to the disk first: an
  interrupted write leaves the old complete output or the new one, never half of one.
- Never over a file tokenlm did not write. A file is tokenlm's when it already holds exactly
  the new bytes, when its hash is in its folder's record (``RECORD``: what tokenlm wrote
  there), or, for outputs older than the record, when the caller's ``legacy`` test recognises
  tokenlm's own format. A folder is tokenlm's when it holds ``FOLDER_MARK`` (or is empty, or,
  again, ``legacy`` recognises it). Anything else is refused in one line, untouched.

Callers hold the run's lock (tokenlm.run.lock) around a publication inside a run, so the
record is read and rewritten by one process at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import file_hash, fsync_dir, fsync_file

RECORD = ".tokenlm-outputs.json"  # in a folder tokenlm publishes files into: {name: [hashes]}
FOLDER_MARK = ".tokenlm-output"  # in a folder tokenlm published whole (an export)


def publish_bytes(path: str | Path, data: bytes, legacy: Callable[[Path], bool] | None = None) -> bool:
    """``path`` := ``data``, by the rule above. Returns whether it wrote (False: it already
    held those bytes)."""
    path = Path(path)
    new = hashlib.sha256(data).hexdigest()[:16]  # fileio.file_hash's spelling
    previous = _current_hash_if_ours(path, new, legacy)
    if previous == new:
        _remember(path, [new])
        return False
    # Both versions are tokenlm's while the rename is under way: a kill between the rename and
    # the record's update must not leave the new file looking like someone else's.
    _remember(path, [new] + ([previous] if previous else []))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
    fsync_dir(path.parent)
    _remember(path, [new])
    return True


def publish_text(path: str | Path, text: str, legacy: Callable[[Path], bool] | None = None) -> bool:
    return publish_bytes(path, text.encode(), legacy)


def publish_json(path: str | Path, obj, legacy: Callable[[Path], bool] | None = None) -> bool:
    """JSON as fileio.write_json formats it, published by the rule."""
    return publish_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", legacy)


def publish_npy(path: str | Path, array, legacy: Callable[[Path], bool] | None = None) -> bool:
    """An array as ``np.save`` writes it, published by the rule."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return publish_bytes(path, buffer.getvalue(), legacy)


def publish_copy(source: str | Path, dest: str | Path, legacy: Callable[[Path], bool] | None = None) -> bool:
    """``dest`` := a copy of ``source`` (a finished stage's file published outside it)."""
    return publish_bytes(dest, Path(source).read_bytes(), legacy)


def has_generation_record(path: str | Path) -> bool:
    """Whether ``path`` (a generated file or its record) has the JSON record tokenlm writes
    beside what it generates (same name, .json, with the codebook size): a generated file from
    before outputs were recorded."""
    try:
        record = json.loads(Path(path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "codebook_size" in record


def _current_hash_if_ours(path: Path, new: str, legacy) -> str | None:
    """The hash of what ``path`` holds now (None: nothing), refusing a file that is not tokenlm's."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        return None
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{path} is not a file tokenlm wrote (a folder or a symlink): it is left as it is; "
                            f"move it away, then rerun")
    current = file_hash(path)
    if current == new or current in _read_record(path.parent).get(path.name, []) or (legacy and legacy(path)):
        return current
    raise ArtifactError(f"{path} was not written by tokenlm (or was edited since): it is not overwritten; "
                        f"move it away (or write elsewhere), then rerun")


def _read_record(folder: Path) -> dict:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _remember(path: Path, hashes: list[str]) -> None:
    record = _read_record(path.parent)
    if record.get(path.name) == hashes:
        return
    record[path.name] = hashes
    target = path.parent / RECORD
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fsync_dir(path.parent)


# ---- whole folders ---------------------------------------------------------------------------

def publish_folder(folder: str | Path, write: Callable[[Path], None],
                   legacy: Callable[[Path], bool] | None = None) -> Path:
    """``folder`` := what ``write(work)`` puts into a fresh work folder beside it, swapped into
    place when complete; the previous contents go as a whole (no stale file of an earlier
    output stays beside the new ones). A folder that is not tokenlm's is refused."""
    folder = Path(folder)
    parent, name = folder.parent, folder.name
    parent.mkdir(parents=True, exist_ok=True)
    _recover(folder)
    if not folder_is_ours(folder, legacy):
        raise ArtifactError(f"{folder} holds files tokenlm did not write (no {FOLDER_MARK} in it): it is not "
                            f"replaced; choose a new or empty folder, or move it away")
    work = parent / f".{name}.partial-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    (work / FOLDER_MARK).write_text("written by tokenlm: replaced as a whole by the next export here\n")
    write(work)
    _flush_tree(work)
    old = parent / f".{name}.old-{os.getpid()}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(work, folder)
    fsync_dir(parent)
    if old.exists():
        shutil.rmtree(old)
    return folder


def folder_is_ours(folder: Path, legacy: Callable[[Path], bool] | None = None) -> bool:
    if not folder.exists() and not folder.is_symlink():
        return True
    if folder.is_symlink() or not folder.is_dir():
        return False
    return (folder / FOLDER_MARK).is_file() or not any(folder.iterdir()) or bool(legacy and legacy(folder))


def _recover(folder: Path) -> None:
    """Clear what an interrupted publication left beside ``folder`` (marked work folders), and
    put back the previous output when a kill fell between the two renames of the swap."""
    parent, name = folder.parent, folder.name
    for old in sorted(parent.glob(f".{name}.old-*")):
        if (old / FOLDER_MARK).is_file() or not old.is_symlink() and old.is_dir() and not any(old.iterdir()):
            if folder.exists():
                shutil.rmtree(old)
            else:
                os.replace(old, folder)
    for work in parent.glob(f".{name}.partial-*"):
        if not work.is_symlink() and (work / FOLDER_MARK).is_file():
            shutil.rmtree(work)


def _flush_tree(directory: Path) -> None:
    for here, _, names in os.walk(directory):
        for name in names:
            fsync_file(Path(here) / name)
        fsync_dir(here)
