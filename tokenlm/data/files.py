"""Input audio files on disk: finding them in a folder (following symlinks, naming what
cannot be used), and which version of each a run used: the stamp ``prepare`` records per
clip in the manifest and the check every stage that re-reads the audio (tokenize, vocoder)
makes against it, so codes or decoders are never made from other audio than the features.
A tar member (``tokenlm.data.tar_member``) is stamped by its tar file, and hashed by its own bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import sha256_file
from tokenlm.data.input_content import METADATA_ONLY, InputHashes
from tokenlm.data.tar_member import TarMember


def find_audio_files(root: Path, extensions, skipped: list[dict]) -> Iterator[Path]:
    """Files under ``root`` whose suffix (any case) is in ``extensions``, in path order.
    Symlinked folders are followed; a folder that leads back to one of its ancestors (a
    symlink loop) is not entered. Loops, dangling symlinks and unreadable files or folders
    are appended to ``skipped`` as {"path", "reason"}: nothing is dropped without a word."""
    return _audio_files(root, extensions, frozenset({os.path.realpath(root)}), skipped)


def _audio_files(folder: Path, extensions, ancestors: frozenset[str], skipped: list[dict]) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        skipped.append({"path": str(folder), "reason": f"folder cannot be read ({err.strerror})"})
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir():  # follows a symlink
            real = os.path.realpath(path)
            if real in ancestors:
                skipped.append({"path": str(path), "reason": f"symlink loop (back to {real})"})
            else:
                yield from _audio_files(path, extensions, ancestors | {real}, skipped)
        elif path.suffix.lower() not in extensions:
            continue
        elif entry.is_symlink() and not path.exists():
            skipped.append({"path": str(path), "reason": f"dangling symlink (to {os.readlink(path)})"})
        elif not entry.is_file():
            skipped.append({"path": str(path), "reason": "not a regular file"})
        elif not os.access(path, os.R_OK):
            skipped.append({"path": str(path), "reason": "unreadable (permission denied)"})
        else:
            yield path


def file_stamp(path: str | Path, hash_content: bool = False) -> dict | None:
    """What identifies a file's version without reading it: size, mtime, ctime and inode (a
    copy made with ``cp -p`` or ``rsync -t`` keeps size and mtime but not ctime and inode),
    plus a hash of its bytes when asked (and readable: decoding will say why it is not). None
    when the file cannot be stat'ed. A tar member's stamp is its tar's, and its hash that of
    the member's bytes alone (the same as the file's hash before it was packed)."""
    member = TarMember.parse(path)
    try:
        st = os.stat(member.tar if member else path)
    except OSError:
        return None
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
    if hash_content:
        try:
            stamp["sha256"] = member.sha256() if member else sha256_file(path)
        except OSError:
            pass
    return stamp


def check_unchanged(row: dict, hashes: InputHashes | None = None) -> None:
    """Fail in one line when the file of a manifest row is not the one ``prepare`` read: a
    stage that re-reads audio must not mix it with features made from another version.
    A change of ctime or inode alone (a hard link, chmod, a backup tool) is not a change of
    the bytes: then the content decides (``input_content.InputHashes``). Rows written before
    files were stamped are not checked."""
    recorded = row.get("file")
    if not recorded:
        return
    now = file_stamp(row["path"], hash_content="sha256" in recorded)
    if now is None:
        raise ArtifactError(f"{row['path']} (clip {row['id']}) was read by `tokenlm prepare` but cannot be "
                            f"found now: restore it, or rerun prepare")
    changed = [key for key in recorded if now.get(key) != recorded[key]]
    if changed and set(changed) <= METADATA_ONLY:
        if (hashes or InputHashes()).same_content(row, now):
            return
        changed = ["ctime (and the bytes are not shown to be the same)"]
    if changed:
        raise ArtifactError(f"{row['path']} (clip {row['id']}) changed since `tokenlm prepare` read it "
                            f"({', '.join(changed)} differ): rerun prepare")
