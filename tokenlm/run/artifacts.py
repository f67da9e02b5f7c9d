"""The run directory's mechanics: atomic stage folders and stage.json (the files
themselves are written by tokenlm.core.fileio).

A stage builds its output in a hidden work folder next to the final one, named by the
stage's key, and renames it into place only when complete, so interrupted work never looks
finished and two configs never share a work folder. The work folder survives an
interruption, so a stage with checkpoints (LM, vocoder) resumes from it. ``stage.json``
records the config, the hashes of the inputs, library versions, wall time and the size and
hash of every output file; a rerun whose config and inputs hash to the same key, and whose
files are all there at their recorded sizes and hashes, skips the stage; anything else rebuilds it.

A stage holds its run's lock (tokenlm.run.lock) from start to finish, so one command at a
time writes a run; the keys of its input stages are read again once it holds the lock, so a
command that waited while another rebuilt an input builds on, and records, what is there.
Loading checks every file's sha256 against stage.json (hashed once per process per file).
Files are fsynced before the renames that publish them, so a power cut never leaves a
"finished" stage with empty files. A folder that tokenlm did not make is
never deleted or replaced.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import file_hash, fingerprint, fsync_dir, fsync_file, read_json, write_json
from tokenlm.run import lock as runlock

STAGE_FILE = "stage.json"
KEY_FILE = ".key"  # in a work folder: the key of the stage it is being built for

# Whether a finished stage keeps its checkpoints folder (--keep-checkpoints, run.keep_checkpoints):
# the resume state is useless once the stage is done, and it is most of a run's bytes.
CHECKPOINTS = "ckpt"  # inside a training stage's work folder: last (resume), best; deleted at finish
_KEEP_CHECKPOINTS = ContextVar("keep_checkpoints", default=False)


@contextmanager
def keeping_checkpoints(keep: bool = True):
    """Within this block, stages that finish keep (True) or delete (False) their ckpt/ folder."""
    token = _KEEP_CHECKPOINTS.set(bool(keep))
    try:
        yield
    finally:
        _KEEP_CHECKPOINTS.reset(token)


# The libraries whose versions can change a stage's numbers (distribution names).
RESULT_LIBRARIES = ("numpy", "torch", "transformers", "faiss-cpu", "faiss-gpu", "faiss", "scikit-learn",
                    "soundfile", "soxr", "librosa", "safetensors")


def library_versions() -> dict:
    """Versions that can change results, and tokenlm's git revision when it runs from a git
    checkout (None otherwise); recorded in every stage.json. Libraries not installed are left out."""
    import tokenlm

    versions = {"tokenlm": tokenlm.__version__, "tokenlm_git": git_revision(), "python": platform.python_version()}
    for package in RESULT_LIBRARIES:
        version = _version(package)
        if version is not None:
            versions[package] = version
    return versions


def _version(package: str) -> str | None:
    # Installed metadata, which spares finishing a stage the cost of importing torch.
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the checkout tokenlm runs from, or None (installed from a
    wheel, no git, a slow disk): it never fails a stage."""
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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


# ---- the record of a stage's files ----------------------------------------------------------

def record_outputs(directory: str | Path) -> dict[str, dict]:
    """Size and hash of every file in a work folder (stage.json and the key file aside), each
    flushed to the disk on the way, as are the folders: ``{relative path: {size, sha256}}``."""
    directory = Path(directory)
    files = {}
    for folder, subfolders, names in os.walk(directory):
        subfolders.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.parent == directory and name in (STAGE_FILE, KEY_FILE):
                continue
            fsync_file(path)
            files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": file_hash(path)}
        fsync_dir(folder)
    return files


# (resolved path, size, mtime_ns, ctime_ns) -> short sha256: each file is hashed once per
# process while it stays the same file, so checking a model on every load costs one reading.
# (ctime too: a write that keeps the size and puts the mtime back still changes it.)
_HASHES: dict[tuple[str, int, int, int], str] = {}


def cached_file_hash(path: Path) -> str:
    """``file_hash`` of ``path``, remembered for this process by (path, size, mtime, ctime)."""
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_hash(path)
    return _HASHES[key]


def output_damage(directory: str | Path, record: dict, hashes: bool = True) -> str | None:
    """What is wrong with a finished stage's files, compared with its stage.json ``record``:
    a missing file, another size or other bytes (``hashes=False``: sizes only); None when all
    is well, or when the record predates file records."""
    directory = Path(directory)
    files = record.get("files")
    if not isinstance(files, dict):
        return None
    for name, expected in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path} is missing"
        if size != expected.get("size"):
            return f"{path} is {size} bytes, not the {expected.get('size')} it had when its stage finished"
        if hashes and cached_file_hash(path) != expected.get("sha256"):
            return f"{path} has changed since its stage finished (its sha256 differs from {directory / STAGE_FILE})"
    return None


def check_outputs(directory: str | Path, hashes: bool = True) -> None:
    """Fail in one line when a finished stage's files are missing, truncated or altered (their
    sha256 against stage.json, once per process per file: ``cached_file_hash``). Loaders call
    it before reading a model or a store; a folder without stage.json (a model copied on its
    own) has no record to check against, and passes."""
    directory = Path(directory)
    if not (directory / STAGE_FILE).is_file():
        return
    damage = output_damage(directory, read_json(directory / STAGE_FILE), hashes)
    if damage:
        raise ArtifactError(f"{damage}: rerun the command that made {directory}")


def verify(directory: str | Path) -> None:
    """``check_outputs``, every file's hash included (what loaders check)."""
    check_outputs(directory, hashes=True)


# ---- stages ---------------------------------------------------------------------------------

def made_by_tokenlm(folder: Path) -> bool:
    """Whether tokenlm may replace or delete ``folder``: a finished stage (stage.json), one
    of its work folders (a key file), or an empty folder. Anything else is the user's."""
    if not folder.exists() and not folder.is_symlink():
        return True  # nothing there to lose
    if folder.is_symlink() or not folder.is_dir():
        return False
    return (folder / STAGE_FILE).is_file() or (folder / KEY_FILE).is_file() or not any(folder.iterdir())


def _refuse_unless_ours(folder: Path, role: str) -> None:
    if not made_by_tokenlm(folder):
        raise ArtifactError(f"{folder} was not made by tokenlm (no {STAGE_FILE} or {KEY_FILE} in it), so it is not "
                            f"replaced as {role}: move it out of the way, or choose another run folder")


def _delete(folder: Path) -> None:
    """Remove a folder of tokenlm's with its marks (stage.json, key file) last, so that one
    whose removal a kill cut short is still recognised as tokenlm's, and cleared next time."""
    for child in folder.iterdir():
        if child.name not in (STAGE_FILE, KEY_FILE):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    shutil.rmtree(folder)


def _key_of_work(folder: Path) -> str | None:
    """The key a work folder is being built for (its key file, or the stage.json of a finish
    that was cut short before the rename)."""
    try:
        if (folder / KEY_FILE).is_file():
            return (folder / KEY_FILE).read_text().strip()
        return json.loads((folder / STAGE_FILE).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


class Stage:
    """One stage's output folder.

    >>> stage = Stage(run.tokenizer, config={...}, inputs={"features": run.features})
    >>> stage.build("autoencoder", make)   # make(work) builds inside `work`, returns extra
    ...                                    # stage.json fields; skipped when up to date

    ``start`` and ``finish`` are the two halves of ``build``, for stages whose work is
    shared between processes (a torchrun rank other than 0 never finishes a stage). The run's
    lock is held from ``start`` to ``finish`` (or until the Stage is dropped, when the work
    stopped with an error).
    """

    def __init__(self, out_dir: str | Path, config: dict, inputs: dict[str, str | Path] | None = None, *,
                 lock_root: str | Path | None = None):
        self.out_dir = Path(out_dir)
        self.config = config
        # An input given as a folder (a Path) is a finished stage whose key is read here, for
        # the up-to-date check, and read again once the run's lock is held (``hold``): another
        # command may rebuild it while this one waits. A string is a key as it is.
        self._input_sources = dict(inputs or {})
        self._set_inputs(self._read_inputs())
        # the run whose lock guards this stage (RunDir.lock_root); a folder outside any run is
        # guarded by its parent's
        self.run_root = Path(lock_root) if lock_root is not None else self.out_dir.absolute().parent
        self._started = None
        self._release = None  # while the run's lock is held: gives it back

    def _read_inputs(self) -> dict[str, str]:
        return {name: stage_key(source) if isinstance(source, os.PathLike) else source
                for name, source in self._input_sources.items()}

    def _set_inputs(self, inputs: dict[str, str]) -> None:
        self.inputs = inputs
        self.key = fingerprint({"config": self.config, "inputs": self.inputs})
        self.work_dir = self.out_dir.parent / f".{self.out_dir.name}.partial-{self.key[:8]}"

    @property
    def done(self) -> bool:
        """True when the final folder exists, was built from the same config and inputs, and
        still holds every file it was finished with, at the same sizes."""
        return self._state() == "done"

    def _state(self) -> str:
        """"done", "missing" (nothing finished, or another key) or why its files are damaged."""
        path = self.out_dir / STAGE_FILE
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return "missing"
        if not isinstance(record, dict) or record.get("key") != self.key:
            return "missing"
        return output_damage(self.out_dir, record) or "done"

    def up_to_date(self, label: str) -> bool:
        """``done``, saying so on stderr: the one check every stage makes before building."""
        state = self._state()
        if state == "done":
            print(f"{label} up to date: {self.out_dir}", file=sys.stderr, flush=True)
        elif state != "missing":
            print(f"{label}: {state}: rebuilding", file=sys.stderr, flush=True)
        return state == "done"

    def verify(self) -> None:
        """Check every output file's hash against stage.json (ArtifactError naming the file)."""
        verify(self.out_dir)

    def build(self, label: str, make: Callable[[Path], dict | None]) -> Path:
        """Skip when up to date; otherwise ``make(work_dir)`` builds the outputs in the work
        folder (returning extra fields for stage.json) and the folder is moved into place."""
        if self.up_to_date(label):
            return self.out_dir
        self.hold()
        try:
            if self._state() == "done":  # another command finished it while this one waited
                print(f"{label} up to date: {self.out_dir}", file=sys.stderr, flush=True)
                return self.out_dir
            extra = make(self.start())
            return self.finish(extra)
        finally:
            self.release()

    def hold(self) -> None:
        """Take the run's lock (waiting a little for another command), if not held already."""
        if self._release is None:
            root = runlock.acquire(self.run_root)
            self._release = weakref.finalize(self, runlock.release, root)
            try:
                self._reread_inputs()
            except BaseException:
                self.release()
                raise

    def _reread_inputs(self) -> None:
        """The input keys as they are now that the lock is held: the stage is built on, and
        records, the inputs it will read, even if one was rebuilt while this command waited."""
        fresh = self._read_inputs()
        changed = [name for name in fresh if fresh[name] != self.inputs.get(name)]
        if changed:
            print(f"{self.out_dir.name}: {', '.join(changed)} changed while this command waited for the run: "
                  f"building on the new version", file=sys.stderr, flush=True)
            self._set_inputs(fresh)

    def release(self) -> None:
        """Give the run's lock back (``finish`` does; so does an error in ``build``)."""
        if self._release is not None:
            self._release()
            self._release = None

    def start(self) -> Path:
        """Take the run's lock and return the work folder, keeping its contents if an
        interrupted run of the same key left them (so checkpoints resume)."""
        self.hold()
        try:
            _refuse_unless_ours(self.out_dir, "an outdated stage")
            self._clear_leftovers()
            if self.work_dir.exists():
                _refuse_unless_ours(self.work_dir, "a work folder")
                if _key_of_work(self.work_dir) != self.key:  # another key with the same 8 first digits
                    _delete(self.work_dir)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            (self.work_dir / KEY_FILE).write_text(self.key)
        except BaseException:
            self.release()
            raise
        self._started = time.time()
        return self.work_dir

    def _clear_leftovers(self) -> None:
        """Remove what tokenlm left next to the stage when it was interrupted: work folders of
        other keys (one of this key from before work folders were named by key is adopted)
        and outdated folders a swap did not get to delete. Others' folders are left alone."""
        parent, name = self.out_dir.parent, self.out_dir.name
        legacy = parent / f".{name}.partial"
        if legacy.is_dir() and _key_of_work(legacy) == self.key and not self.work_dir.exists():
            os.replace(legacy, self.work_dir)
        for folder in [*parent.glob(f".{name}.partial*"), *parent.glob(f".{name}.old-*")]:
            if folder != self.work_dir and folder.is_dir() and not folder.is_symlink() and made_by_tokenlm(folder):
                _delete(folder)

    def finish(self, extra: dict | None = None) -> Path:
        """Record the outputs in stage.json, flush everything to the disk, move the work
        folder into place and give the run's lock back."""
        if self._started is None:
            raise RuntimeError("Stage.finish() called before start()")
        for stale in self.work_dir.rglob(".*.tmp-*"):  # a temporary file of a process that died writing it
            if stale.is_file():
                stale.unlink()
        if not _KEEP_CHECKPOINTS.get():
            shutil.rmtree(self.work_dir / CHECKPOINTS, ignore_errors=True)
        record = {
            "stage": self.out_dir.name,
            "key": self.key,
            "config": self.config,
            "inputs": self.inputs,
            "versions": library_versions(),
            "wall_time_s": round(time.time() - self._started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
            "files": record_outputs(self.work_dir),
        }
        write_json(self.work_dir / STAGE_FILE, record)
        (self.work_dir / KEY_FILE).unlink(missing_ok=True)
        fsync_dir(self.work_dir)
        self._swap_into_place()
        self.release()
        return self.out_dir

    def _swap_into_place(self) -> None:
        # An outdated final folder goes as a whole, nested stages built on it included; a
        # folder that is not tokenlm's is refused, never deleted.
        _refuse_unless_ours(self.out_dir, "an outdated stage")
        old = self.out_dir.parent / f".{self.out_dir.name}.old-{os.getpid()}"
        if self.out_dir.exists():
            os.replace(self.out_dir, old)
        os.replace(self.work_dir, self.out_dir)
        fsync_dir(self.out_dir.parent)
        if old.exists():
            _delete(old)
