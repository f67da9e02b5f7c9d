"""Which version of an input audio file a run used: the stamp ``prepare`` records per clip
in the manifest, and the check every stage that re-reads the audio (tokenize, vocoder,
generate) makes against it, so codes or decoders are never made from other audio than the
features were.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tokenlm.errors import ArtifactError


def file_stamp(path: str | Path, hash_content: bool = False) -> dict | None:
    """What identifies a file's version without reading it: size, mtime, ctime and inode (a
    copy made with ``cp -p`` or ``rsync -t`` keeps size and mtime but not ctime and inode),
    plus a hash of its bytes when asked. None when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
    if hash_content:
        stamp["sha256"] = _content_hash(path)
    return stamp


def _content_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_unchanged(row: dict) -> None:
    """Fail in one line when the file of a manifest row is not the one ``prepare`` read: a
    stage that re-reads audio must not mix it with features made from another version.
    Rows written before files were stamped are not checked."""
    recorded = row.get("file")
    if not recorded:
        return
    now = file_stamp(row["path"], hash_content="sha256" in recorded)
    if now is None:
        raise ArtifactError(f"{row['path']} (clip {row['id']}) was read by `tokenlm prepare` but cannot be "
                            f"found now: restore it, or rerun prepare")
    changed = [key for key in recorded if now.get(key) != recorded[key]]
    if changed:
        raise ArtifactError(f"{row['path']} (clip {row['id']}) changed since `tokenlm prepare` read it "
                            f"({', '.join(changed)} differ): rerun prepare")
