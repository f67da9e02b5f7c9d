"""One writer per run directory: an exclusive lock on ``RUN/.tokenlm.lock``.

A stage holds its run's lock from ``Stage.start`` to ``Stage.finish``, so two commands on one
run can never build into the same folder or swap a folder under each other. A second command
waits a little (``TOKENLM_LOCK_WAIT`` seconds, default 10), saying whom it waits for, then
stops with one line naming the holder. The lock is ``flock``: the kernel drops it when its
holder dies (kill -9 included), so a stale lock file never blocks anyone.

The lock is re-entrant within a process (``tokenlm run`` and the sweep start stages inside
stages) and the file is removed when the last hold is released, so a run folder holds no
lock file at rest. Under torchrun only rank 0 writes a stage, so only rank 0 takes the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tokenlm.core.errors import ArtifactError
from tokenlm.core.safe_paths import refuse_unsafe_run_folder

LOCK_FILE = ".tokenlm.lock"
WAIT_ENV = "TOKENLM_LOCK_WAIT"
DEFAULT_WAIT_S = 10.0

_held: dict[Path, list] = {}  # resolved run folder -> [fd, depth], this process's holds
_guard = threading.Lock()


class RunLocked(ArtifactError):
    """Another process holds the run's lock."""


def acquire(root: str | Path) -> Path:
    """Hold ``root``'s lock (waiting up to ``TOKENLM_LOCK_WAIT`` s); returns the resolved root."""
    root = Path(root).resolve()
    with _guard:
        if root in _held:
            _held[root][1] += 1
            return root
        refuse_unsafe_run_folder(root)  # before the folder is made or anything written into it
        _held[root] = [_lock(root), 1]
    return root


def release(root: str | Path) -> None:
    """Give back one hold of ``root``'s lock; the last one removes the file and unlocks."""
    root = Path(root).resolve()
    with _guard:
        hold = _held.get(root)
        if hold is None:
            return
        hold[1] -= 1
        if hold[1] > 0:
            return
        del _held[root]
    fd = hold[0]
    if fd is None:  # the file system cannot lock: nothing to undo
        return
    # Unlink while still holding it: a waiter that opened this file then finds, once it gets
    # the lock, that the path no longer names its file, and retries on a fresh one.
    try:
        (root / LOCK_FILE).unlink(missing_ok=True)
    finally:
        os.close(fd)


@contextmanager
def holding(root: str | Path):
    """Hold ``root``'s lock for a block (a command's publications, a whole ``tokenlm run``)."""
    root = acquire(root)
    try:
        yield root
    finally:
        release(root)


def holds(root: str | Path) -> bool:
    """Whether this process holds ``root``'s lock."""
    return Path(root).resolve() in _held


def _lock(root: Path) -> int | None:
    path = root / LOCK_FILE
    wait = _wait_seconds()
    deadline = time.monotonic() + wait
    told = False
    while True:
        fd = _open(root, path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(path)
            if time.monotonic() >= deadline:
                raise RunLocked(f"{root} is in use by {holder}: wait for it to finish "
                                f"(or set {WAIT_ENV} to wait longer than {wait:g} s)") from None
            if not told:
                print(f"waiting up to {wait:g} s for {holder} to finish with {root} ...", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.05)
            continue
        except OSError as err:  # e.g. a network file system without locks: go on unlocked
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise ArtifactError(f"cannot lock {path}: {err.strerror}") from None
            print(f"warning: {root} cannot be locked ({err.strerror}): run one command at a time on it",
                  file=sys.stderr, flush=True)
            return None
        if _names_this_file(fd, path):
            _write_holder(fd)
            return fd
        os.close(fd)  # its last holder removed it while we waited: lock the file there now


def _open(root: Path, path: Path) -> int:
    try:
        root.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ArtifactError(f"cannot write to {root}: {err.strerror}") from None


def _names_this_file(fd: int, path: Path) -> bool:
    try:
        here, mine = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _write_holder(fd: int) -> None:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} ({command[:200]})\n".encode())


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


def _wait_seconds() -> float:
    value = os.environ.get(WAIT_ENV, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_WAIT_S
    except ValueError:
        raise ArtifactError(f"{WAIT_ENV}={value!r} is not a number of seconds") from None
