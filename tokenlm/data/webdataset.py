"""WebDataset tar shards -> clips, read in place (no unpacking).

The data is one .tar, a folder holding only .tar files, a glob (``shards/train-*.tar``) or a
brace range (``train-{000000..000009}.tar``, WebDataset's notation; ``{a,b}`` lists too).
Shards are read in path order, members in tar order. A sample is the members sharing a key:
the member name up to the first dot of its base name (``dog/clip-17.flac`` +
``dog/clip-17.json``: key ``dog/clip-17``, the clip's id). Its audio is the member with an
audio suffix; its label the JSON's ``label`` field, else a ``.cls`` member (a ``.txt``
member is not read: in speech corpora it is a transcript, not a class); ``split``, ``fold``
and ``group`` come from the JSON when it has them. Other members (embeddings, video, ...) are
ignored.

Only headers and metadata members are read here: each clip's path names its audio member's
byte range (``tokenlm.data.tar_member``), which decoding reads in place. Samples that cannot be
clips (no audio, two audio members, bad metadata, a damaged tail of a shard) are recorded
with a reason. Shards are plain tar, as WebDataset writes them: a compressed one is refused.

``pack_shards`` writes any dataset tokenlm reads as such shards (``tokenlm data pack``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from pathlib import Path, PurePosixPath

from tokenlm.core.errors import ConfigError
from tokenlm.data.clips import AUDIO_EXTENSIONS, Clip, split_name
from tokenlm.data.tar_member import TarMember

COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.lz4")
# How compressed files begin, to name the compression of a compressed tar renamed .tar.
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_PATTERN = re.compile(r"[*?\[{]")
_BRACES = re.compile(r"\{(?:(?P<first>\d+)\.\.(?P<last>\d+)|(?P<items>[^{}]*,[^{}]*))\}")


def is_webdataset(root: Path) -> bool:
    """Whether ``root`` names tar shards: a tar file, a glob or brace pattern of them, or a
    folder holding only tar files (compressed ones too, so reading them says they are)."""
    if root.is_dir():
        return _only_tars(root)
    if root.exists():
        return _is_tar(root.name)
    return _PATTERN.search(str(root)) is not None and _is_tar(str(root))


def read_webdataset(root: Path, skipped: list[dict]) -> list[Clip]:
    """Every sample of the shards ``root`` names that has one audio member, as a clip."""
    clips = []
    for shard in shard_paths(root):
        clips += _read_shard(Path(os.path.realpath(shard)), skipped)
    return clips


def shard_paths(root: Path) -> list[Path]:
    """The tar files ``root`` names, sorted: one error in one line for none or a compressed one."""
    if root.is_dir():
        shards = [root / name for name in os.listdir(root) if not name.startswith(".")]
    elif root.exists():
        shards = [root]
    else:
        shards = []
        for pattern in expand_braces(str(root)):
            found = glob.glob(pattern) if _PATTERN.search(pattern) else [pattern]
            missing = [p for p in found if not os.path.isfile(p)]
            if missing:
                raise ConfigError(f"shard not found: {missing[0]} (from {root})")
            shards += map(Path, found)
        if not shards:
            raise ConfigError(f"no tar shards match {root}")
    compressed = [s for s in shards if s.name.lower().endswith(COMPRESSED_TAR)]
    if compressed:
        raise ConfigError(f"{compressed[0]}: WebDataset shards must be plain .tar (they are read in place, "
                          f"and a compressed tar cannot be): decompress it, e.g. gunzip or zstd -d")
    return sorted(set(shards))


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); ``{x,y}``
    -> each item. Several braces multiply."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    if match["items"] is not None:
        items = match["items"].split(",")
    else:
        first, last = int(match["first"]), int(match["last"])
        width = len(match["first"]) if match["first"].startswith("0") else 0
        items = [str(n).zfill(width) for n in range(first, last + 1)]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [expanded for item in items for expanded in expand_braces(head + item + tail)]


def _only_tars(folder: Path) -> bool:
    """Whether ``folder`` holds tar files and nothing else (hidden files aside); stops at the
    first other entry, so a large folder of audio is not listed whole."""
    found = False
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if not (_is_tar(entry.name) and entry.is_file()):
                    return False
                found = True
    except OSError:  # the folder layouts say what is wrong with it
        return False
    return found


def _compression(path: Path) -> str | None:
    """The compression a file's first bytes announce (a compressed tar renamed .tar), if any."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


def _is_tar(name: str) -> bool:
    return name.lower().endswith((".tar", *COMPRESSED_TAR))


def _read_shard(shard: Path, skipped: list[dict]) -> list[Clip]:
    """The shard's clips in tar order; its unusable samples appended to ``skipped``."""
    try:
        tar = tarfile.open(shard, "r:")  # "r:": uncompressed only
    except (tarfile.TarError, OSError) as err:
        compression = _compression(shard)
        if compression:
            raise ConfigError(f"{shard} is {compression}-compressed: WebDataset shards must be plain .tar "
                              f"(they are read in place, and a compressed tar cannot be)") from None
        raise ConfigError(f"{shard}: not a readable plain tar file ({err})") from None
    with tar:
        samples: dict[str, list[tarfile.TarInfo]] = {}  # key -> its members, in tar order
        try:
            for info in tar:
                if info.isfile() and not info.issparse():
                    samples.setdefault(_key(info.name), []).append(info)
                elif not info.isdir():
                    skipped.append({"path": f"{shard}#{info.name}", "reason": "not a regular file in the tar"})
        except tarfile.TarError as err:  # a damaged extended header
            _damaged(shard, tar.offset, skipped, f" ({err})")
        else:
            _check_tail(shard, tar.offset, skipped)
        clips = []
        for key, members in samples.items():
            try:
                clips.append(_clip(shard, key, members, tar))
            except _BadSample as bad:
                skipped.append({"path": f"{shard}#{key}", "reason": str(bad)})
        return clips


class _BadSample(Exception):
    """A sample that cannot be a clip; the message is the reason recorded."""


def _clip(shard: Path, key: str, members: list[tarfile.TarInfo], tar: tarfile.TarFile) -> Clip:
    audio = [m for m in members if PurePosixPath(m.name).suffix.lower() in AUDIO_EXTENSIONS]
    if len(audio) != 1:
        names = ", ".join(PurePosixPath(m.name).name for m in (audio or members))
        raise _BadSample(f"{'no audio member' if not audio else 'more than one audio member'} ({names})")
    meta = {_extension(m.name): m for m in members}
    record = _json(tar, meta["json"]) if "json" in meta else {}
    label = record.get("label")
    if label in (None, "") and "cls" in meta:
        label = _text(tar, meta["cls"])
    try:
        fold = None if record.get("fold") in (None, "") else int(record["fold"])
        split = split_name(record.get("split"), "split")
    except (TypeError, ValueError, ConfigError) as err:
        raise _BadSample(f"bad metadata: {err}") from None
    member = audio[0]
    return Clip(id=key, path=str(TarMember(str(shard), member.offset_data, member.size, member.name)),
                label=None if label in (None, "") else str(label),
                group=None if record.get("group") in (None, "") else str(record["group"]),
                fold=fold, split=split)


def _key(name: str) -> str:
    """WebDataset's sample key: the name up to its base name's first dot (no leading ./)."""
    path = PurePosixPath(name)
    key = str(path.parent / path.name.split(".", 1)[0])
    return key[2:] if key.startswith("./") else key


def _extension(name: str) -> str:
    """What follows the base name's first dot, lower case (``json``, ``cls``, ``seg.flac``)."""
    parts = PurePosixPath(name).name.split(".", 1)
    return parts[1].lower() if len(parts) > 1 else ""


def _text(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    try:
        return tar.extractfile(info).read().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _BadSample(f"{PurePosixPath(info.name).name} is not UTF-8 text") from None


def _json(tar: tarfile.TarFile, info: tarfile.TarInfo) -> dict:
    try:
        record = json.loads(_text(tar, info))
    except json.JSONDecodeError as err:
        raise _BadSample(f"{PurePosixPath(info.name).name} is not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise _BadSample(f"{PurePosixPath(info.name).name} is not a JSON object")
    return record


def _check_tail(shard: Path, end: int, skipped: list[dict]) -> None:
    """tarfile stops quietly at a damaged header: what follows it is recorded, not lost
    without a word. A sound tar ends with zero blocks (or exactly at the end of the file)."""
    with open(shard, "rb") as f:
        f.seek(end)
        block = f.read(tarfile.BLOCKSIZE)
    if block.strip(b"\0"):
        _damaged(shard, end, skipped)


def _damaged(shard: Path, offset: int, skipped: list[dict], detail: str = "") -> None:
    skipped.append({"path": str(shard), "reason": f"damaged tar header at byte {offset}{detail}: the rest of "
                                                   f"the shard is not read"})


# ---- writing ---------------------------------------------------------------------------
