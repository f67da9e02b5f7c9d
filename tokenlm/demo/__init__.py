"""Offline, deterministic demo datasets built from bundled synthesizers.

Three labelled sets can be built without any download:

- ``instruments``: short phrases (1-4 notes, 2 s) played by General-MIDI programs of the
  ``TimGM6mb.sf2`` soundfont that ships inside the ``pretty_midi`` wheel, rendered with
  ``tinysoundfont``. Label = GM instrument family (10 classes), group = GM program (5 per
  family), so a group-aware split never hears the same instrument on both sides.
- ``speech``: ten spoken keywords (1 s) from the eSpeak NG library bundled in
  ``espeakng-loader``. Label = keyword, group = voice (accent + voice variant).
- ``pitch``: single held notes (1 s) of 50 pitched GM programs. Label = pitch class (12
  classes), group = GM program.

Layout of a build::

    OUT/<label>/<label>_<group>_<index>.wav    16 kHz mono 16-bit PCM
    OUT/meta.csv                               path,label,group (path relative to OUT)
    OUT/demo.json                              parameters, sources, summary

A build is a pure function of its parameters: every clip draws from its own seeded numpy
Generator, so a rerun writes identical bytes (on the same platform and library versions).

This module runs a build (``build_demo``); ``instruments``, ``speech`` and ``pitch`` make
each kind's clips, ``common`` holds the clip format they share and ``files`` writes a build to disk.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Not used here: the tests check these parts of the kinds through this package.
from tokenlm.demo.common import PEAK_LIMIT, SAMPLE_RATE, SILENT_PEAK, Clip, DemoError  # noqa: F401
from tokenlm.demo.files import (
    cached_summary,
    check_out_dir,
    file_sha256,
    new_work_folder,
    package_version,
    publish_folder,
    summarise,
    write_demo_wav,
    write_index,
)
from tokenlm.demo.instruments import (  # noqa: F401
    INSTRUMENT_CLIP_SECONDS,
    INSTRUMENT_CLIPS_PER_GROUP,
    INSTRUMENT_FAMILIES,
    InstrumentRenderer,
    draw_phrase,
    import_tinysoundfont,
    instrument_clips,
    soundfont_path,
)
from tokenlm.demo.pitch import PITCH_CLASSES, PITCH_CLIP_SECONDS, PITCH_CLIPS_PER_GROUP, PITCH_PROGRAMS, pitch_clips
from tokenlm.demo.speech import (
    KEYWORDS,
    SPEECH_CLIP_SECONDS,
    SPEECH_CLIPS_PER_GROUP,
    VOICES,
    espeak_paths,
    speech_clips,
)

__all__ = ["build_demo", "DemoError", "INSTRUMENT_FAMILIES", "KEYWORDS", "VOICES", "PITCH_CLASSES",
           "PITCH_PROGRAMS", "KINDS"]

KINDS = ("instruments", "speech", "pitch")
DEFAULT_CLIPS_PER_GROUP = {"instruments": INSTRUMENT_CLIPS_PER_GROUP, "speech": SPEECH_CLIPS_PER_GROUP,
                           "pitch": PITCH_CLIPS_PER_GROUP}
# Bump when the rendering changes, so that cached builds made by older code are rebuilt.
FORMAT_VERSION = 1


def build_demo(
    out_dir: str | Path,
    *,
    kind: str = "instruments",
    seed: int = 0,
    progress: bool = True,
    clips_per_group: int | None = None,
    soundfont: str | Path | None = None,
) -> dict:
    """Build a labelled demo dataset into ``out_dir`` (offline, deterministic).

    Args:
        out_dir: target folder; written atomically (built in ``<out_dir>.tmp-<pid>`` and
            renamed into place), so an interrupted build never looks finished.
        kind: ``"instruments"`` (10 GM families, 800 clips of 2 s by default),
            ``"speech"`` (10 keywords spoken by 12 eSpeak NG voices, 720 clips of 1 s) or
            ``"pitch"`` (12 pitch classes played by 50 GM programs, 600 clips of 1 s).
        seed: seeds every clip's random draws; the same seed gives identical files.
        progress: show a tqdm progress bar.
        clips_per_group: clips per (label, group) pair; default 16 (instruments: per GM
            program), 6 (speech: per keyword and voice) or 1 (pitch: per pitch class and
            program). Small values make tiny builds
            for tests.
        soundfont: instruments and pitch only; a General-MIDI .sf2 to use instead of the
            ``TimGM6mb.sf2`` bundled with pretty_midi.

    Returns:
        Summary dict: ``n_clips``, ``n_classes``, ``n_groups``, ``seconds`` (total audio),
        ``sample_rate``, ``per_class`` and ``groups_per_class`` counts, ``skipped`` (clips
        given up after repeated silent renders), plus ``out_dir``, ``cached`` (True when an
        existing complete build with the same parameters was reused) and ``build_seconds``.

    Raises:
        DemoError (a ValueError): unknown kind, bad arguments, or the soundfont / synthesis
        library cannot be found.
    """
    t0 = time.perf_counter()
    if kind not in KINDS:
        raise DemoError(f"unknown demo kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoError(f"seed must be a non-negative integer, got {seed!r}")
    per_group = DEFAULT_CLIPS_PER_GROUP[kind] if clips_per_group is None else int(clips_per_group)
    if per_group < 1:
        raise DemoError(f"clips_per_group must be >= 1, got {clips_per_group!r}")
    out_dir = Path(out_dir)

    if kind in ("instruments", "pitch"):
        sf_path = soundfont_path(soundfont)
        import_tinysoundfont()
        source = {
            "soundfont": sf_path.name,
            "soundfont_sha256": file_sha256(sf_path),
            "synth": f"tinysoundfont {package_version('tinysoundfont')}",
        }
    else:
        if soundfont is not None:
            raise DemoError("soundfont only applies to kind='instruments' or 'pitch'")
        lib_path, _ = espeak_paths()
        source = {
            "synth": f"eSpeak NG via espeakng-loader {package_version('espeakng-loader')}",
            "library_sha256": file_sha256(lib_path),
        }
    params = {
        "kind": kind,
        "seed": int(seed),
        "clips_per_group": per_group,
        "sample_rate": SAMPLE_RATE,
        "format_version": FORMAT_VERSION,
        "source": source,
    }

    cached = cached_summary(out_dir, params)
    if cached is not None:
        return {**cached, "out_dir": str(out_dir), "cached": True,
                "build_seconds": round(time.perf_counter() - t0, 3)}
    check_out_dir(out_dir)

    tmp = new_work_folder(out_dir)
    try:
        if kind == "instruments":
            clips = instrument_clips(sf_path, int(seed), per_group)
            total = per_group * sum(len(programs) for programs in INSTRUMENT_FAMILIES.values())
            clip_seconds = INSTRUMENT_CLIP_SECONDS
        elif kind == "pitch":
            clips = pitch_clips(sf_path, int(seed), per_group)
            total = per_group * len(PITCH_CLASSES) * len(PITCH_PROGRAMS)
            clip_seconds = PITCH_CLIP_SECONDS
        else:
            clips = speech_clips(int(seed), per_group)
            total = per_group * len(KEYWORDS) * len(VOICES)
            clip_seconds = SPEECH_CLIP_SECONDS
        rows, skipped = _write_clips(tmp, clips, total, f"demo {kind}", progress)
        rows.sort()
        summary = {**summarise(rows, clip_seconds), "skipped": skipped}
        write_index(tmp, rows, {"generator": "tokenlm.demo", "params": params, "summary": summary})
        publish_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "out_dir": str(out_dir), "cached": False,
            "build_seconds": round(time.perf_counter() - t0, 3)}


def _progress_bar(total: int, desc: str, enabled: bool):
    from tokenlm.core.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="clip", enabled=enabled)


def _write_clips(tmp: Path, clips: Iterable[Clip], total: int, desc: str, progress: bool):
    """Write each clip as ``<label>/<label>_<group>_<index>.wav`` under ``tmp``.

    Returns the (path, label, group) rows of the written clips and the number skipped.
    """
    rows, skipped = [], 0
    with _progress_bar(total, desc, progress) as bar:
        for label, group, index, pcm in clips:
            if pcm is None:
                skipped += 1
            else:
                rel = f"{label}/{label}_{group}_{index:03d}.wav"
                (tmp / label).mkdir(exist_ok=True)
                write_demo_wav(tmp / rel, pcm)
                rows.append((rel, label, group))
            bar.update(1)
    return rows, skipped
