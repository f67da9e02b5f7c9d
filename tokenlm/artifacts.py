"""The run directory's mechanics: atomic stage folders, stage.json, hashing, JSON files.

A stage builds its output in a hidden work folder next to the final one and renames it into
place only when complete, so interrupted work never looks finished. The work folder survives
an interruption, so a stage with checkpoints (LM, vocoder) resumes from it. ``stage.json``
records the config, the hashes of the inputs, library versions and wall time; a rerun whose
config and inputs hash to the same key skips the stage, any change rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tokenlm.errors import ArtifactError

STAGE_FILE = "stage.json"


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Short sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()[:16]


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None


def write_jsonl(path: str | Path, rows) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    os.replace(tmp, path)


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


def library_versions() -> dict:
    """Versions that can change results; recorded in every stage.json."""
    import numpy
    import torch

    import tokenlm

    return {
        "tokenlm": tokenlm.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
    }


def stage_key(out_dir: str | Path) -> str:
    """The key of a finished stage, used as the input hash of the stages built on it."""
    return read_stage(out_dir)["key"]


def read_stage(out_dir: str | Path, hint: str = "") -> dict:
    """stage.json of a finished stage, or a clear error naming what to run first."""
    path = Path(out_dir) / STAGE_FILE
    if not path.is_file():
        advice = f": run {hint} first" if hint else ""
        raise ArtifactError(f"{out_dir} is missing or incomplete{advice}")
    return read_json(path)


class Stage:
    """One stage's output folder.

    >>> stage = Stage(run.tokenizer, config={...}, inputs={"features": key})
    >>> stage.build("autoencoder", make)   # make(work) builds inside `work`, returns extra
    ...                                    # stage.json fields; skipped when up to date

    ``start`` and ``finish`` are the two halves of ``build``, for stages whose work is
    shared between processes (a torchrun rank other than 0 never finishes a stage).
    """

    def __init__(self, out_dir: str | Path, config: dict, inputs: dict[str, str] | None = None):
        self.out_dir = Path(out_dir)
        self.config = config
        self.inputs = dict(inputs or {})
        self.key = fingerprint({"config": config, "inputs": self.inputs})
        self.work_dir = self.out_dir.parent / f".{self.out_dir.name}.partial"
        self._started = None

    @property
    def done(self) -> bool:
        """True when the final folder exists and was built from the same config and inputs."""
        path = self.out_dir / STAGE_FILE
        if not path.is_file():
            return False
        try:
            return json.loads(path.read_text()).get("key") == self.key
        except (OSError, json.JSONDecodeError):
            return False

    def up_to_date(self, label: str) -> bool:
        """``done``, saying so on stderr: the one check every stage makes before building."""
        if self.done:
            print(f"{label} up to date: {self.out_dir}", file=sys.stderr, flush=True)
        return self.done

    def build(self, label: str, make: Callable[[Path], dict | None]) -> Path:
        """Skip when up to date; otherwise ``make(work_dir)`` builds the outputs in the work
        folder (returning extra fields for stage.json) and the folder is moved into place."""
        if self.up_to_date(label):
            return self.out_dir
        extra = make(self.start())
        return self.finish(extra)

    def start(self) -> Path:
        """Return the work folder, keeping its contents if an interrupted run of the same
        key left them (so checkpoints resume), wiping them if the key changed."""
        key_file = self.work_dir / ".key"
        if self.work_dir.exists() and (not key_file.is_file() or key_file.read_text() != self.key):
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(self.key)
        self._started = time.time()
        return self.work_dir

    def finish(self, extra: dict | None = None) -> Path:
        """Write stage.json into the work folder and move it into place."""
        if self._started is None:
            raise RuntimeError("Stage.finish() called before start()")
        record = {
            "stage": self.out_dir.name,
            "key": self.key,
            "config": self.config,
            "inputs": self.inputs,
            "versions": library_versions(),
            "wall_time_s": round(time.time() - self._started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        (self.work_dir / ".key").unlink(missing_ok=True)
        write_json(self.work_dir / STAGE_FILE, record)
        self._swap_into_place()
        return self.out_dir

    def _swap_into_place(self) -> None:
        # An outdated final folder goes as a whole, nested stages built on it included.
        old = self.out_dir.parent / f".{self.out_dir.name}.old-{os.getpid()}"
        if self.out_dir.exists():
            os.replace(self.out_dir, old)
        os.replace(self.work_dir, self.out_dir)
        if old.exists():
            shutil.rmtree(old)
