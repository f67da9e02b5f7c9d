"""Whether an input file whose stamp changed only in ctime or inode still holds the bytes
``prepare`` read.

A hard link, a chmod or chown, or a backup tool touching a dataset's files changes their ctime
(a restored copy, their inode) without changing a byte; so does nothing a user would call a
change. But ``cp -p other file`` writes other bytes and puts size and mtime back, so ctime is
also the only trace of a real replacement. When only those differ, the content decides:

1. the sha256 in the stamp, when ``prepare --hash-content`` recorded one;
2. else the sha256 pinned in RUN/input_hashes.json by an earlier check of this file (at the
   same size and mtime);
3. else the file is decoded and featurised again and compared with the features ``prepare``
   stored for the clip; when they agree, its sha256 is pinned (2.) so that the next check
   only hashes it.

A clip whose content cannot be shown to be the same is refused, as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from tokenlm.core.fileio import sha256_file
from tokenlm.data.tar_member import TarMember

# What a hard link, chmod, chown or a backup tool changes without touching a byte.
METADATA_ONLY = frozenset({"ctime_ns", "inode"})
_accepted: set[tuple] = set()  # (path, ctime_ns, inode) this process found unchanged



class InputHashes:
    """The content checks of one run: the sha256s it pinned in ``hashes_file``
    (RUN/input_hashes.json) and ``features_match(row)``, whether a clip featurised again gives
    the features the run stored (tokenlm.run.input_check.run_input_hashes builds both). With
    neither: the recorded sha256 alone."""

    def __init__(self, hashes_file: str | Path | None = None, features_match: Callable[[dict], bool] | None = None):
        self.hashes_file = Path(hashes_file) if hashes_file is not None else None
        self.features_match = features_match
        self.known: dict = {}
        if self.hashes_file is not None and self.hashes_file.is_file():
            try:
                self.known = json.loads(self.hashes_file.read_text())
            except ValueError:  # damaged: checked again from the features, and rewritten
                self.known = {}
        self.changed = False

    def same_content(self, row: dict, now: dict) -> bool:
        """Whether the file of manifest ``row`` (its recorded stamp in row["file"]), now
        stamped ``now``, holds the bytes prepare read."""
        path, recorded = row["path"], row["file"]
        seen = (path, now.get("ctime_ns"), now.get("inode"))
        if seen in _accepted:
            return True
        if "sha256" in recorded:
            same = (now.get("sha256") or _content_hash(path)) == recorded["sha256"]
        elif self.hashes_file is None or self.features_match is None:
            same = False
        else:
            digest = _content_hash(path)
            pinned = self.known.get(path)
            if pinned and (pinned.get("size"), pinned.get("mtime_ns")) == (recorded["size"], recorded["mtime_ns"]):
                same = pinned.get("sha256") == digest
            else:
                same = self.features_match(row)
                if same:
                    self.known[path] = {"size": recorded["size"], "mtime_ns": recorded["mtime_ns"], "sha256": digest}
                    self.changed = True
        if same:
            _accepted.add(seen)
        return same

    def save(self) -> None:
        """Write RUN/input_hashes.json (by tokenlm.core.outputs' rule) when it grew; under the run's lock."""
        from tokenlm.core.outputs import publish_text  # it builds on fileio, as this module does

        if self.changed and self.hashes_file is not None:
            publish_text(self.hashes_file, json.dumps(self.known, indent=1, sort_keys=True) + "\n")
            self.changed = False


def settled_stamps(stamps: dict[str, dict | None], previous: dict[str, dict], hashes: InputHashes) -> dict:
    """``stamps`` (clip id -> stamp now) with the stamp of ``previous`` (clip id -> the row
    prepare recorded) kept wherever only ctime or inode differ and the content is the same, so
    that rerunning prepare after a hard link or a chmod finds the features up to date."""
    settled = dict(stamps)
    for clip_id, now in stamps.items():
        row = previous.get(clip_id)
        recorded = row.get("file") if row else None
        if not now or not recorded or set(now) != set(recorded):
            continue
        changed = {key for key in recorded if now[key] != recorded[key]}
        if changed and changed <= METADATA_ONLY and hashes.same_content(row, now):
            settled[clip_id] = recorded
    return settled


def _content_hash(path: str) -> str:
    member = TarMember.parse(path)
    return member.sha256() if member else sha256_file(path)
