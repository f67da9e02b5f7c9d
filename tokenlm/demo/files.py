"""A demo build on disk: wav files, ``meta.csv`` and ``demo.json``, reuse of a complete
build, and the work folder that only becomes the build once it is complete."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import numpy as np

from tokenlm.core.fileio import sha256_file
from tokenlm.demo.common import SAMPLE_RATE, DemoError

META_FILE = "meta.csv"
INFO_FILE = "demo.json"


def write_demo_wav(path: Path, pcm: np.ndarray) -> None:
    import soundfile as sf

    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


file_sha256 = sha256_file  # the demo records the soundfont and eSpeak library it was built with


def summarise(rows: list[tuple[str, str, str]], seconds_per_clip: float) -> dict:
    per_class: dict[str, int] = {}
    groups: dict[str, set] = {}
    for _, label, group in rows:
        per_class[label] = per_class.get(label, 0) + 1
        groups.setdefault(label, set()).add(group)
    return {
        "n_clips": len(rows),
        "n_classes": len(per_class),
        "n_groups": len(set().union(*groups.values())) if groups else 0,
        "seconds": round(len(rows) * seconds_per_clip, 3),
        "sample_rate": SAMPLE_RATE,
        "per_class": per_class,
        "groups_per_class": {label: len(g) for label, g in groups.items()},
    }


def cached_summary(out_dir: Path, params: dict) -> dict | None:
    info_path = out_dir / INFO_FILE
    if not (out_dir / META_FILE).is_file() or not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("params") != params:
        return None
    return info.get("summary")


def check_out_dir(out_dir: Path) -> None:
    """Refuse a target that is a file, or a non-empty folder that is not a demo build."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoError(f"{out_dir} exists and is not a folder; choose another output folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / INFO_FILE).is_file():
        # Never delete a folder this module did not write.
        raise DemoError(f"{out_dir} exists and is not a demo build; choose another output folder")


def new_work_folder(out_dir: Path) -> Path:
    """An empty ``<out_dir>.tmp-<pid>`` to build in, after clearing what dead builds left."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_folders(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_index(tmp: Path, rows: list[tuple[str, str, str]], info: dict) -> None:
    """Write ``meta.csv`` (rows in the given order), then ``demo.json``."""
    with open(tmp / META_FILE, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "group"])
        writer.writerows(rows)
    # Written last: its presence (with meta.csv) marks a complete build.
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def publish_folder(tmp: Path, out_dir: Path) -> None:
    """Rename the complete build ``tmp`` to ``out_dir``, replacing an older build there."""
    if out_dir.exists():  # an outdated or empty build: swap it out, then delete it
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _remove_stale_work_folders(out_dir: Path) -> None:
    """Delete ``<out_dir>.tmp-<pid>`` / ``.old-<pid>`` folders left by builds that died."""
    if os.name != "posix":  # liveness check below needs POSIX kill(pid, 0)
        return
    for path in out_dir.parent.glob(f"{out_dir.name}.*-*"):
        stem, _, pid = path.name.rpartition("-")
        if stem not in (f"{out_dir.name}.tmp", f"{out_dir.name}.old") or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or not path.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive, owned by another user
            pass

