"""Folders no run may be written into: ``/``, the system's own folders, the home folder
itself, and the folders above the current one. A run writes features/, tokens/, recipe.yaml,
report.md ... at its top level and replaces stage folders there; in such a place (a mistyped
``run.dir: /``, ``--out ~`` or ``--out ..``) that would scatter files among the user's or the
system's, and as root could replace them. Checked where every run's writing starts: taking
its lock (tokenlm.run.lock).
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenlm.core.errors import ConfigError

# Folders that are the system's, as a whole: nothing under them is a run.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                "/sys", "/usr", "/System", "/Library", "/private/etc")
# Folders that hold others' folders: a run may live below them, never be one of them.
SYSTEM_FOLDERS = ("/", "/home", "/Users", "/root", "/tmp", "/var", "/var/tmp", "/opt", "/srv", "/mnt", "/media",
                  "/Volumes", "/private", "/private/tmp", "/private/var", "/snap")


def refuse_unsafe_run_folder(root: str | Path) -> None:
    """One line (ConfigError) when ``root`` is no place for a run."""
    path = Path(os.path.realpath(root))
    why = unsafe_reason(path)
    if why:
        raise ConfigError(f"{root} cannot be a run folder ({why}): give a folder of its own, e.g. runs/NAME")


def unsafe_reason(path: Path) -> str | None:
    """Why the resolved folder ``path`` cannot be a run folder, or None."""
    text = str(path)
    if text in SYSTEM_FOLDERS or text in map(_real, SYSTEM_FOLDERS):
        return "it is the root or a system folder"
    for tree in SYSTEM_TREES:
        if _is_within(text, tree) or _is_within(text, _real(tree)):
            return f"it is in the system folder {tree}"
    home = _real(os.path.expanduser("~"))
    if text == home:
        return "it is the home folder itself"
    cwd = _real(os.getcwd())
    if text != cwd and _is_within(cwd, text):
        return "it holds the current folder"
    return None


def _real(path: str) -> str:
    return os.path.realpath(path)


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")
