"""Dataset layouts -> clips (id, path, label, group, fold, and an official split if any).

Layouts read: ESC-50 (meta/esc50.csv, 5 folds), UrbanSound8K (metadata/UrbanSound8K.csv,
10 folds), GTZAN (genres/<genre>/*), Speech Commands (validation_list.txt/testing_list.txt),
a CSV/JSONL manifest (path,label[,split|fold|group][,start,end]), a Hugging Face audiofolder
(metadata.csv/.jsonl with a file_name column, at the top or in per-split folders), a Hugging
Face dataset saved with ``save_to_disk`` (tokenlm.data.hf_datasets; the hf extra), WebDataset tar shards
(a .tar, a folder of them, a glob or brace pattern; tokenlm.data.webdataset) and folder-per-class
(DIR/<label>/*). A manifest's start/end (seconds) make a clip a segment of a long recording.

Every clip's path is absolute and resolved, so a run never depends on the directory it was
started from. Folders are scanned following symlinks (a symlink loop is cut and recorded);
entries that cannot be clips (dangling symlinks, unreadable files or folders) are recorded
with a reason rather than dropped. Paths a metadata file lists must lie inside the dataset's
folder unless ``allow_outside``.

The train/val/test split of the clips is tokenlm.data.splits.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import replace
from pathlib import Path

from tokenlm.core.errors import ConfigError
from tokenlm.data.clips import AUDIO_EXTENSIONS, SPLIT_ALIASES, Clip, split_name
from tokenlm.data.files import find_audio_files
from tokenlm.data.tar_member import TarMember

# ---- layouts ----------------------------------------------------------------------------

def detect_layout(root: str | Path) -> str:
    """Name of the layout of ``root`` (a folder, a manifest file, or tar shards)."""
    root = Path(root)
    if _is_webdataset(root):
        return "webdataset"
    if root.is_file():
        return "manifest"
    if not root.is_dir():
        raise ConfigError(f"data not found: {root}")
    if (root / "meta" / "esc50.csv").is_file():
        return "esc50"
    if (root / "metadata" / "UrbanSound8K.csv").is_file():
        return "urbansound8k"
    if _gtzan_genres(root) is not None:
        return "gtzan"
    if (root / "testing_list.txt").is_file() and (root / "validation_list.txt").is_file():
        return "speechcommands"
    if _manifest_in(root):
        return "manifest"
    if _audiofolder_splits(root):
        return "audiofolder"
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "hf"
    return "folders"


# Layouts whose paths come from a metadata file, which could name any file on the machine.
_LISTED_LAYOUTS = ("manifest", "esc50", "urbansound8k", "audiofolder")


def scan_dataset(root: str | Path, *, allow_outside: bool = False,
                 skipped: list[dict] | None = None) -> tuple[str, list[Clip]]:
    """Every clip the dataset at ``root`` lists, with the layout's name and absolute, resolved
    paths. Files are not opened. ``skipped``, when given, receives the entries of a scanned
    folder that cannot be clips ({"path", "reason"}); paths a metadata file lists outside the
    dataset's folder are refused unless ``allow_outside``."""
    root = Path(os.path.abspath(root))
    layout = detect_layout(root)
    found: list[dict] = []  # what the folder walk could not use
    readers = {
        "esc50": read_esc50,
        "urbansound8k": read_urbansound8k,
        "gtzan": lambda r: read_gtzan(r, found),
        "speechcommands": lambda r: read_speechcommands(r, found),
        "manifest": read_manifest,
        "audiofolder": read_audiofolder,
        "hf": _read_hf,
        "webdataset": lambda r: _read_webdataset(r, found),
        "folders": lambda r: read_folders(r, found),
    }
    clips = readers[layout](root)
    if skipped is not None:
        skipped += found
    if not clips:
        raise ConfigError(f"no audio files found in {root} (layout: {layout})")
    _check_unique_ids(root, clips)
    if layout in _LISTED_LAYOUTS and not allow_outside:
        _check_inside(root if root.is_dir() else root.parent, clips)
    return layout, [replace(c, path=_resolved(c.path)) for c in clips]


def scan_sources(sources, *, allow_outside: bool = False,
                 skipped: list[dict] | None = None) -> tuple[str, list[Clip]]:
    """``scan_dataset`` of one dataset, or of several pooled into one (a pretraining corpus
    made of several folders): a pooled source's clip ids and groups are prefixed with its
    folder's name, so they stay unique and a split never divides one source's group."""
    if isinstance(sources, (str, os.PathLike)):
        return scan_dataset(sources, allow_outside=allow_outside, skipped=skipped)
    sources = [str(s) for s in sources]
    if not sources:
        raise ConfigError("no data given (an empty list of datasets)")
    if len(sources) == 1:
        return scan_dataset(sources[0], allow_outside=allow_outside, skipped=skipped)
    names = [Path(s.rstrip("/")).stem for s in sources]
    if len(set(names)) < len(names):
        raise ConfigError(f"datasets pooled from several folders need distinct folder names, got {', '.join(names)}")
    layouts, clips = [], []
    for name, source in zip(names, sources):
        layout, found = scan_dataset(source, allow_outside=allow_outside, skipped=skipped)
        layouts.append(layout)
        clips += [replace(c, id=f"{name}/{c.id}", group=f"{name}/{c.group}" if c.group else None) for c in found]
    return "+".join(layouts), clips


def source_text(sources) -> str:
    """How a dataset (or several pooled) is named in records: its path, or paths joined by ','."""
    return str(sources) if isinstance(sources, (str, os.PathLike)) else ",".join(str(s) for s in sources)


def _check_unique_ids(root: Path, clips: list[Clip]) -> None:
    """x.wav and x.flac in one folder would both be clip x: name them instead of guessing."""
    first: dict[str, Clip] = {}
    for clip in clips:
        other = first.setdefault(clip.id, clip)
        if other is not clip:
            raise ConfigError(f"{root}: clip ids are not unique: '{clip.id}' is both {other.path} and "
                              f"{clip.path} (rename one, or give ids in a manifest)")


def _check_inside(folder: Path, clips: list[Clip]) -> None:
    """A listed path outside the dataset's folder is refused: a manifest should not be able to
    read /etc/passwd or another dataset by accident. The test is on the resolved path of the
    file that would be opened (for a tar member, its tar: the member's name is never a path),
    so neither ``../`` in any part of the string nor a symlink leads out."""
    folder = Path(os.path.realpath(folder))
    for clip in clips:
        member = TarMember.parse(clip.path)
        opened = os.path.realpath(os.path.join(folder, member.tar if member else clip.path))
        if os.path.commonpath([folder, opened]) != str(folder):
            raise ConfigError(f"{clip.path} (clip {clip.id}) is outside the dataset folder {folder}: move it in, "
                              f"or allow it with --allow-outside (recipe: data.allow_outside: true)")


def read_folders(root: Path, skipped: list[dict] | None = None) -> list[Clip]:
    """DIR/<label>/**/<file>: the label is the first folder under DIR. Symlinks are followed."""
    clips = []
    for path in find_audio_files(root, AUDIO_EXTENSIONS, skipped if skipped is not None else []):
        rel = path.relative_to(root)
        label = rel.parts[0] if len(rel.parts) > 1 else None
        clips.append(Clip(id=_clip_id(rel), path=str(path), label=label))
    return clips


def read_manifest(root: Path, split: str | None = None) -> list[Clip]:
    """A CSV or JSONL file with columns path,label[,split|fold|group|id][,start,end]; paths
    relative to it. An audiofolder's metadata file names its path column file_name. With
    start/end (seconds, either may be empty) a row is that segment of its file: its id is the
    file's plus @start-end unless given, and its group the file's, so the segments of one
    recording stay in one split. ``split``: the split of rows that name none."""
    path = root if root.is_file() else _manifest_in(root)
    base = path.parent
    records = _records(path)
    column = next((c for c in ("path", "file_name") if records and c in records[0]), "path")
    if records and column not in records[0]:
        raise ConfigError(f"{path}: a manifest needs a 'path' column, or 'file_name' as in a Hugging Face "
                          f"audiofolder (has: {', '.join(records[0])})")
    clips = []
    for n, rec in enumerate(records, start=1):
        if not isinstance(rec, dict) or not rec.get(column):
            raise ConfigError(f"{path}: entry {n} has no {column}")
        rel = Path(rec[column])
        try:
            fold = _int(rec.get("fold"))
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: entry {n}: fold must be a whole number, got {rec.get('fold')!r}") from None
        start, end = _span(rec, path, n)
        segment = "" if start is None and end is None else f"@{_seconds_text(start)}-{_seconds_text(end)}"
        clips.append(Clip(
            id=str(rec.get("id") or _clip_id(rel) + segment),
            path=str(rel if rel.is_absolute() else base / rel),
            label=_text(rec.get("label")),
            group=_text(rec.get("group")) or (_clip_id(rel) if segment else None),
            fold=fold,
            split=split_name(rec.get("split"), path) or split,
            start=start,
            end=end,
        ))
    return clips


def read_audiofolder(root: Path) -> list[Clip]:
    """A Hugging Face audiofolder split by folders: ROOT/<split>/metadata.{csv,jsonl} (file_name
    relative to it); the folder names the split (train, validation, test and their aliases)
    and prefixes the clip ids."""
    clips = []
    for folder in _audiofolder_splits(root):
        clips += [replace(c, id=f"{folder.name}/{c.id}")
                  for c in read_manifest(_manifest_in(folder), split_name(folder.name, folder))]
    return clips


def _read_hf(root: Path) -> list[Clip]:
    from tokenlm.data.hf_datasets import read_saved_dataset  # the hf extra, only when asked for

    return read_saved_dataset(root)


def _resolved(path: str) -> str:
    """The absolute, resolved path; for a tar member's path (a manifest may list one, as a
    run's subset does), its tar's, the member's name kept as it is."""
    member = TarMember.parse(path)
    if member is None:
        return os.path.realpath(path)
    return str(replace(member, tar=os.path.realpath(member.tar)))


def _is_webdataset(root: Path) -> bool:
    from tokenlm.data.webdataset import is_webdataset

    return is_webdataset(root)


def _read_webdataset(root: Path, skipped: list[dict]) -> list[Clip]:
    from tokenlm.data.webdataset import read_webdataset

    return read_webdataset(root, skipped)


def _records(path: Path) -> list:
    """A manifest's rows: CSV rows, or one JSON object per JSONL line."""
    if path.suffix != ".jsonl":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}, line {n}: not valid JSON ({err.msg})") from None
    return records


def _span(rec: dict, path: Path, n: int) -> tuple[float | None, float | None]:
    """A row's start/end seconds (None where not given), checked: 0 <= start < end."""
    try:
        start, end = (None if rec.get(k) in (None, "") else float(rec[k]) for k in ("start", "end"))
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: entry {n}: start and end must be seconds, got "
                          f"{rec.get('start')!r} and {rec.get('end')!r}") from None
    if (start is not None and not start >= 0) or (end is not None and not end > (start or 0.0)):
        raise ConfigError(f"{path}: entry {n}: a segment needs 0 <= start < end, got start={start} end={end}")
    if not all(math.isfinite(t) for t in (start, end) if t is not None):  # inf would overflow a sample count
        raise ConfigError(f"{path}: entry {n}: start and end must be finite seconds (leave end empty for the "
                          f"file's end), got start={start} end={end}")
    return start, end


def _seconds_text(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:g}"


def read_esc50(root: Path) -> list[Clip]:
    """ESC-50: meta/esc50.csv (filename, fold, category, src_file), audio/ folder, 5 folds.
    Clips cut from the same source recording share a group."""
    with open(root / "meta" / "esc50.csv", newline="") as f:
        return [
            Clip(id=Path(r["filename"]).stem, path=str(root / "audio" / r["filename"]),
                 label=r["category"], group=r.get("src_file") or None, fold=int(r["fold"]))
            for r in csv.DictReader(f)
        ]


def read_urbansound8k(root: Path) -> list[Clip]:
    """UrbanSound8K: metadata/UrbanSound8K.csv, audio/fold<k>/<slice_file_name>, 10 folds.
    Slices of the same freesound recording (fsID) share a group."""
    with open(root / "metadata" / "UrbanSound8K.csv", newline="") as f:
        return [
            Clip(id=Path(r["slice_file_name"]).stem,
                 path=str(root / "audio" / f"fold{r['fold']}" / r["slice_file_name"]),
                 label=r["class"], group=r["fsID"], fold=int(r["fold"]))
            for r in csv.DictReader(f)
        ]


def read_gtzan(root: Path, skipped: list[dict] | None = None) -> list[Clip]:
    """GTZAN: genres/<genre>/<genre>.000NN.{au,wav} (genres_original/ in the Kaggle copy);
    no official split."""
    return read_folders(_gtzan_genres(root), skipped)


def _gtzan_genres(root: Path) -> Path | None:
    for name in ("genres", "genres_original"):
        if (root / name).is_dir():
            return root / name
    return None


def read_speechcommands(root: Path, skipped: list[dict] | None = None) -> list[Clip]:
    """Speech Commands: <word>/<speaker>_nohash_<n>.wav with official validation/testing lists.
    The speaker hash is the group. _background_noise_ is not a class and is left out."""
    val = set((root / "validation_list.txt").read_text().split())
    test = set((root / "testing_list.txt").read_text().split())
    clips = []
    for clip in read_folders(root, skipped):
        if clip.label is None or clip.label.startswith("_"):
            continue
        rel = Path(clip.path).relative_to(root).as_posix()
        split = "val" if rel in val else "test" if rel in test else "train"
        speaker = Path(rel).name.split("_nohash_")[0]
        clips.append(replace(clip, group=speaker, split=split))
    return clips


def _manifest_in(root: Path) -> Path | None:
    for name in ("meta.csv", "manifest.csv", "manifest.jsonl", "metadata.csv", "metadata.jsonl"):
        if (root / name).is_file():
            return root / name
    return None


def _audiofolder_splits(root: Path) -> list[Path]:
    """ROOT's split folders that hold an audiofolder metadata file, in name order."""
    return [folder for folder in sorted(root.iterdir()) if folder.name.lower() in SPLIT_ALIASES
            and folder.is_dir() and _manifest_in(folder) is not None]


def _clip_id(rel: Path) -> str:
    return rel.with_suffix("").as_posix()


def _text(value) -> str | None:
    return None if value in (None, "") else str(value)


def _int(value) -> int | None:
    return None if value in (None, "") else int(value)


