"""A Hugging Face ``datasets`` dataset saved with ``save_to_disk`` -> clips (the hf extra).

Read offline with ``datasets.load_from_disk``: a DatasetDict's splits become tokenlm's
(train, validation/valid/dev -> val, test), a single Dataset may carry a ``split`` column.
The audio column is the one typed ``Audio`` (else one named ``audio``); it is read
undecoded, so no audio backend of ``datasets`` is needed. Its value may be

- a file path (kept as the clip's path; relative paths are taken from the dataset's folder),
- encoded bytes (an Audio feature's usual storage), or
- a decoded array ({"array", "sampling_rate"}).

Bytes and arrays are written once to files in a cache folder keyed by the dataset's
fingerprints ($TOKENLM_CACHE, default ~/.cache/tokenlm, under hf_audio/): every later stage
(the vocoder, a re-encode) re-reads a clip from a file and checks it is unchanged, so an
in-memory clip needs one. Bytes are written as they are and arrays as float32 WAV, so
decoding them gives exactly the samples the dataset holds.

The label is the ``label`` column, else the first ``ClassLabel`` column (class names, not
numbers); ``id``, ``group`` and ``fold`` columns are used when present.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from tokenlm.core.errors import ConfigError
from tokenlm.data.clips import Clip, split_name

ROWS_PER_READ = 256  # rows fetched from the arrow table at a time: bounded memory


def require_datasets():
    """The ``datasets`` module, or a one-line error naming the extra that installs it."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("reading or writing Hugging Face datasets needs the hf extra: "
                          "pip install 'tokenlm[hf]'") from None
    return datasets


def read_saved_dataset(root: Path) -> list[Clip]:
    """Every row of the dataset saved at ``root`` as a clip (see the module docstring)."""
    datasets = require_datasets()
    try:
        loaded = datasets.load_from_disk(str(root))
    except Exception as err:  # datasets raises several types for a damaged folder
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{root}: cannot load the saved dataset ({reason})") from None
    parts = list(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    cache = _cache_folder(root, [ds._fingerprint for _, ds in parts])
    clips = []
    for split, ds in parts:
        clips += _split_clips(root, ds, split, cache, datasets)
    return clips


def _split_clips(root: Path, ds, split: str | None, cache: Path, datasets) -> list[Clip]:
    audio = _audio_column(ds, root, datasets)
    label = _label_column(ds, datasets)
    names = ds.features[label].names if label and isinstance(ds.features[label], datasets.ClassLabel) else None
    official = split_name(split, root) if split is not None else None
    prefix = f"{split}/" if split is not None else ""
    clips = []
    table = ds.with_format("arrow")
    for begin in range(0, len(ds), ROWS_PER_READ):
        for n, row in enumerate(table[begin:begin + ROWS_PER_READ].to_pylist(), start=begin):
            clip_id = str(row["id"]) if row.get("id") not in (None, "") else f"{prefix}{n:06d}"
            value = row[label] if label else None
            clips.append(Clip(
                id=clip_id,
                path=_audio_file(row[audio], root, cache / (split or "data") / f"{n:06d}", clip_id),
                label=None if value is None else names[value] if names else str(value),
                group=None if row.get("group") in (None, "") else str(row["group"]),
                fold=None if row.get("fold") in (None, "") else int(row["fold"]),
                split=official or split_name(row.get("split"), root),
            ))
    return clips


def _audio_column(ds, root: Path, datasets) -> str:
    typed = [name for name, feature in ds.features.items() if isinstance(feature, datasets.Audio)]
    if typed:
        return typed[0]
    if "audio" in ds.features:
        return "audio"
    raise ConfigError(f"{root}: no audio column (an Audio feature, or a column named 'audio'); "
                      f"columns: {', '.join(ds.features)}")


def _label_column(ds, datasets) -> str | None:
    if "label" in ds.features:
        return "label"
    return next((name for name, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)


def _audio_file(value, root: Path, stem: Path, clip_id: str) -> str:
    """The file holding one row's audio: its own path, or a cache file written from its bytes
    or array (once: an existing cache file is the same dataset's)."""
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise ConfigError(f"clip {clip_id}: the audio is neither a path, bytes nor an array ({type(value).__name__})")
    if value.get("bytes"):
        target = stem.with_suffix(Path(value.get("path") or "x.wav").suffix or ".wav")
        return _write_once(target, lambda tmp: tmp.write_bytes(value["bytes"]))
    if value.get("array") is not None:
        array = np.asarray(value["array"], dtype=np.float32)
        array = array.T if array.ndim == 2 and array.shape[0] < array.shape[1] else array  # (C, T) -> (T, C)
        rate = int(value.get("sampling_rate") or 0)
        if rate <= 0:
            raise ConfigError(f"clip {clip_id}: a decoded array needs its sampling_rate")
        return _write_once(stem.with_suffix(".wav"),
                           lambda tmp: sf.write(tmp, array, rate, subtype="FLOAT", format="WAV"))
    if value.get("path"):
        path = Path(value["path"])
        return str(path if path.is_absolute() else root / path)
    raise ConfigError(f"clip {clip_id}: the audio has no path, bytes or array")


def _write_once(target: Path, write) -> str:
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        write(tmp)
        os.replace(tmp, target)  # a crash never leaves half a file under the final name
    return str(target)


def _cache_folder(root: Path, fingerprints: list[str]) -> Path:
    base = Path(os.environ.get("TOKENLM_CACHE") or Path.home() / ".cache" / "tokenlm")
    key = hashlib.sha256("\n".join([os.path.realpath(root), *fingerprints]).encode()).hexdigest()[:16]
    return base.expanduser() / "hf_audio" / f"{Path(root).name}-{key}"
