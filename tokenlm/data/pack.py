"""Any dataset tokenlm reads, written as WebDataset tar shards (`tokenlm data pack`)."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
from pathlib import Path, PurePosixPath

from tokenlm.core.errors import ConfigError
from tokenlm.data.clips import Clip
from tokenlm.data.layouts import scan_dataset
from tokenlm.data.tar_member import TarMember


def pack_shards(data: str | Path, out: str | Path, clips_per_shard: int = 1000, *,
                allow_outside: bool = False) -> dict:
    """The clips of ``data`` (any layout tokenlm reads) as shards OUT/shard-000000.tar, ...:
    each clip's file as it is, named by its id (``<id>.flac``), beside ``<id>.json`` with its
    label, group, fold and official split. The bytes depend on the data alone (members dated
    0, owned by no one), so packing again gives the same shards. Returns {"clips", "shards",
    "skipped"} (entries the scan could not use)."""
    out = Path(out)
    if clips_per_shard < 1:
        raise ConfigError(f"clips per shard must be at least 1, got {clips_per_shard}")
    if out.exists() and any(out.iterdir()):  # stale shards of an earlier packing would be read too
        raise ConfigError(f"{out} is not empty: pack into a new folder")
    skipped: list[dict] = []
    _, clips = scan_dataset(data, allow_outside=allow_outside, skipped=skipped)
    refuse_unsafe_member_names(clips)
    for clip in clips:
        if clip.start is not None or clip.end is not None:
            raise ConfigError(f"clip {clip.id} is a segment of {clip.path}: only whole files can be packed")
        if "." in PurePosixPath(clip.id).name:
            raise ConfigError(f"clip id {clip.id!r} has a dot in its name, and a WebDataset key ends at the "
                              f"first dot: rename the file, or give ids in a manifest")
    out.mkdir(parents=True, exist_ok=True)
    shards = [clips[i:i + clips_per_shard] for i in range(0, len(clips), clips_per_shard)]
    for n, shard in enumerate(shards):
        partial = out / f".shard-{n:06d}.tar.partial"  # hidden: never read as a shard
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for clip in shard:
                _add_clip(tar, clip)
        partial.replace(out / f"shard-{n:06d}.tar")
    return {"clips": len(clips), "shards": len(shards), "skipped": skipped}


def unsafe_member_name(name: str) -> str | None:
    """Why a clip id cannot name a tar member (a tool that extracts the shard would write
    outside its folder, or not where the name says), or None when it is safe."""
    path = PurePosixPath(name)
    if not name or "\x00" in name or "\\" in name:
        return "it is empty or holds a NUL or a backslash"
    if path.is_absolute() or re.match(r"[A-Za-z]:", name):
        return "it is an absolute path"
    if ".." in path.parts or any(part in ("", ".") for part in name.split("/")):
        return "it holds '..', '.' or an empty folder name"
    return None


def refuse_unsafe_member_names(clips: list[Clip]) -> None:
    """Refuse to pack clips whose ids would be unsafe member names (tar-slip): one line on
    stderr per such id, then one error. They are refused rather than rewritten, since a
    rewritten id would no longer match the labels or splits that name it."""
    unsafe = [(clip, why) for clip in clips if (why := unsafe_member_name(clip.id)) is not None]
    for clip, why in unsafe:
        print(f"unsafe member name {clip.id!r} (clip of {clip.path}): {why}", file=sys.stderr, flush=True)
    if unsafe:
        raise ConfigError(f"{len(unsafe)} clip id(s) would be unsafe tar member names (e.g. {unsafe[0][0].id!r}: "
                          f"{unsafe[0][1]}): nothing packed; give them plain relative ids in a manifest")


def _add_clip(tar: tarfile.TarFile, clip: Clip) -> None:
    member = TarMember.parse(clip.path)
    suffix = PurePosixPath(member.name if member else clip.path).suffix.lower()
    meta = {key: value for key, value in (("label", clip.label), ("group", clip.group), ("fold", clip.fold),
                                          ("split", clip.split)) if value is not None}
    try:
        with member.open() if member else open(clip.path, "rb") as audio:
            size = member.size if member else os.fstat(audio.fileno()).st_size
            tar.addfile(_entry(f"{clip.id}{suffix}", size), audio)
    except OSError as err:
        raise ConfigError(f"{clip.path} (clip {clip.id}) cannot be read: {err.strerror or err}") from None
    text = json.dumps(meta, sort_keys=True).encode()
    tar.addfile(_entry(f"{clip.id}.json", len(text)), io.BytesIO(text))


def _entry(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)  # mtime 0, uid/gid 0, no owner names: the same bytes every time
    info.size, info.mode = size, 0o644
    return info
