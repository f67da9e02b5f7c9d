"""Offline, deterministic demo datasets built from bundled synthesizers.

Two labelled sets can be built without any download:

- ``instruments``: short phrases (1-4 notes, 2 s) played by General-MIDI programs of the
  ``TimGM6mb.sf2`` soundfont that ships inside the ``pretty_midi`` wheel, rendered with
  ``tinysoundfont``. Label = GM instrument family (10 classes), group = GM program (4 per
  family), so a group-aware split never hears the same instrument on both sides.
- ``speech``: ten spoken keywords (1 s) from the eSpeak NG library bundled in
  ``espeakng-loader``. Label = keyword, group = voice (accent + voice variant).

Layout of a build::

    OUT/<label>/<label>_<group>_<index>.wav    16 kHz mono 16-bit PCM
    OUT/meta.csv                               path,label,group (path relative to OUT)
    OUT/demo.json                              parameters, sources, summary

A build is a pure function of its parameters: every clip draws from its own seeded numpy
Generator, so a rerun writes identical bytes (on the same platform and library versions).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlm.errors import TokenlmError

__all__ = ["build_demo", "DemoError", "INSTRUMENT_FAMILIES", "KEYWORDS", "VOICES", "KINDS"]

SAMPLE_RATE = 16000
KINDS = ("instruments", "speech")
# Bump when the rendering changes, so that cached builds made by older code are rebuilt.
FORMAT_VERSION = 1
META_FILE = "meta.csv"
INFO_FILE = "demo.json"

# A clip may never be louder than this (-1 dBFS) nor have a peak below SILENT_PEAK (-40 dBFS).
PEAK_LIMIT = 10 ** (-1 / 20)
SILENT_PEAK = 10 ** (-40 / 20)
MAX_ATTEMPTS = 5  # re-draws of a rejected clip before it is skipped


class DemoError(TokenlmError, ValueError):
    """The demo set cannot be built (missing soundfont or library, bad arguments)."""


# ---------------------------------------------------------------------------------------
# Instruments
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """One General-MIDI program and the MIDI pitch range it is played in."""

    program: int  # 0-based GM program number
    name: str
    low: int  # lowest MIDI key drawn
    high: int  # highest MIDI key drawn (inclusive)


# Ten GM families, five programs each (so a group-aware split keeps 3/1/1 per family). Ranges keep each instrument near its real compass,
# so a program is not recognisable only by being played far outside it.
INSTRUMENT_FAMILIES: dict[str, tuple[Program, ...]] = {
    "piano": (
        Program(0, "acoustic grand piano", 36, 84),
        Program(3, "honky-tonk piano", 40, 84),
        Program(4, "electric piano 1", 40, 84),
        Program(6, "harpsichord", 41, 84),
        Program(1, "bright acoustic piano", 36, 84),
    ),
    "mallet": (
        Program(8, "celesta", 60, 96),
        Program(11, "vibraphone", 53, 89),
        Program(12, "marimba", 48, 84),
        Program(13, "xylophone", 65, 96),
        Program(10, "music box", 60, 96),
    ),
    "organ": (
        Program(16, "drawbar organ", 36, 84),
        Program(19, "church organ", 36, 84),
        Program(21, "accordion", 53, 89),
        Program(22, "harmonica", 60, 84),
        Program(17, "percussive organ", 36, 84),
    ),
    "guitar": (
        Program(24, "nylon guitar", 40, 76),
        Program(25, "steel guitar", 40, 76),
        Program(26, "jazz guitar", 40, 76),
        Program(29, "overdrive guitar", 40, 76),
        Program(27, "clean electric guitar", 40, 76),
    ),
    "bass": (
        Program(32, "acoustic bass", 28, 55),
        Program(33, "fingered bass", 28, 55),
        Program(35, "fretless bass", 28, 55),
        Program(38, "synth bass 1", 28, 55),
        Program(34, "picked bass", 28, 55),
    ),
    "strings": (
        Program(40, "violin", 55, 88),
        Program(41, "viola", 48, 79),
        Program(42, "cello", 36, 69),
        Program(43, "contrabass", 28, 55),
        Program(44, "tremolo strings", 48, 79),
    ),
    "brass": (
        Program(56, "trumpet", 55, 82),
        Program(57, "trombone", 40, 72),
        Program(58, "tuba", 28, 58),
        Program(60, "french horn", 41, 77),
        Program(61, "brass section", 48, 77),
    ),
    "reed": (
        Program(65, "alto sax", 49, 80),
        Program(66, "tenor sax", 44, 75),
        Program(68, "oboe", 58, 89),
        Program(71, "clarinet", 50, 89),
        Program(70, "bassoon", 34, 65),
    ),
    "pipe": (
        Program(72, "piccolo", 74, 102),
        Program(73, "flute", 60, 96),
        Program(74, "recorder", 60, 91),
        Program(75, "pan flute", 60, 91),
        Program(79, "ocarina", 60, 91),
    ),
    "synth_lead": (
        Program(80, "square lead", 48, 84),
        Program(81, "sawtooth lead", 48, 84),
        Program(82, "calliope lead", 48, 84),
        Program(84, "charang lead", 48, 84),
        Program(83, "chiff lead", 48, 84),
    ),
}

INSTRUMENT_CLIP_SECONDS = 2.0
INSTRUMENT_CLIPS_PER_GROUP = 16  # 10 families x 5 programs x 16 = 800 clips
# tinysoundfont interpolates samples linearly with no anti-alias filter, so high notes
# rendered straight at 16 kHz alias; render at 48 kHz and let soxr band-limit (3:1).
RENDER_RATE = 48000
# Each program is scaled so that its reference note (velocity 100, middle of its range)
# peaks here: families differ by timbre, not by the soundfont's arbitrary preset levels,
# while velocity still changes loudness within a program.
REFERENCE_PEAK = 0.25
VELOCITY_LEVELS = (48, 72, 96, 116)


def _soundfont_path(soundfont: str | Path | None) -> Path:
    if soundfont is not None:
        path = Path(soundfont)
        if not path.is_file():
            raise DemoError(f"soundfont not found: {path}")
        return path
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the pretty_midi package (which ships TimGM6mb.sf2) is not installed: "
                        "pip install pretty_midi")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "TimGM6mb.sf2"
        if path.is_file():
            return path
    raise DemoError("TimGM6mb.sf2 not found inside the installed pretty_midi package")


def _import_tinysoundfont():
    try:
        import tinysoundfont
    except ImportError:
        raise DemoError("tinysoundfont is not installed: pip install --no-deps tinysoundfont") from None
    return tinysoundfont


@dataclass(frozen=True)
class Note:
    key: int
    velocity: int
    on: float  # seconds from the clip start
    off: float


def draw_phrase(rng: np.random.Generator, prog: Program, playable: frozenset[int] | None = None) -> list[Note]:
    """A short melodic phrase: 1-4 notes, mostly small steps, all inside ``prog``'s range.

    ``playable``: the keys that sound in the soundfont (a preset can have holes in its key
    map: TimGM6mb's alto sax has no sample for E4); other keys move to the nearest one.
    """
    n_notes = int(rng.integers(1, 5))
    start = float(rng.uniform(0.02, 0.15))
    # The last note is released by ~1.5 s so that its release tail fits in the clip.
    end = float(rng.uniform(1.2, 1.6))
    weights = rng.uniform(0.5, 1.5, size=n_notes)
    onsets = start + np.concatenate([[0.0], np.cumsum(weights)[:-1]]) / weights.sum() * (end - start)
    base_velocity = int(rng.choice(VELOCITY_LEVELS))
    key = int(rng.integers(prog.low, prog.high + 1))
    notes = []
    for i in range(n_notes):
        if i > 0:
            key += int(rng.choice([-7, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 7]))
            if key < prog.low or key > prog.high:  # reflect back into the range
                key = 2 * (prog.low if key < prog.low else prog.high) - key
                key = min(max(key, prog.low), prog.high)
        if playable is not None and key not in playable:
            key = min(playable, key=lambda k: (abs(k - key), k))
        velocity = int(np.clip(base_velocity + rng.integers(-10, 11), 1, 127))
        off = onsets[i + 1] - float(rng.uniform(0.0, 0.04)) if i + 1 < n_notes else end
        notes.append(Note(key, velocity, float(onsets[i]), float(off)))
    return notes


class _InstrumentRenderer:
    """Renders phrases with one tinysoundfont Synth, resetting it between clips."""

    def __init__(self, soundfont: Path):
        tsf = _import_tinysoundfont()
        import soxr

        self._soxr = soxr
        self.synth = tsf.Synth(samplerate=RENDER_RATE)
        self.sfid = self.synth.sfload(str(soundfont))
        self._gain: dict[int, float] = {}
        self._playable: dict[int, frozenset[int]] = {}

    def _render(self, program: int, notes: list[Note], seconds: float) -> np.ndarray:
        synth = self.synth
        self._silence()
        synth.program_select(0, self.sfid, 0, program)
        total = int(round(seconds * RENDER_RATE))
        events = []
        for note in notes:
            events.append((int(round(note.on * RENDER_RATE)), 1, note))
            events.append((int(round(note.off * RENDER_RATE)), 0, note))
        events.sort(key=lambda e: (e[0], e[1]))  # note-offs before note-ons at one instant
        chunks, pos = [], 0
        for at, is_on, note in events:
            if at > pos:
                chunks.append(np.frombuffer(synth.generate(at - pos), dtype=np.float32).copy())
                pos = at
            if is_on:
                synth.noteon(0, note.key, note.velocity)
            else:
                synth.noteoff(0, note.key)
        if total > pos:
            chunks.append(np.frombuffer(synth.generate(total - pos), dtype=np.float32).copy())
        self._silence()
        stereo = np.concatenate(chunks).reshape(-1, 2)  # (T, 2) interleaved float32
        mono = stereo.astype(np.float64).mean(axis=1)
        return self._soxr.resample(mono, RENDER_RATE, SAMPLE_RATE, quality="HQ")

    def _silence(self) -> None:
        # sounds_off only starts a fast fade of every voice; running the synth past it lets
        # the voices end, so a render does not depend on the clips rendered before it
        # (tested against a fresh Synth).
        self.synth.sounds_off()
        self.synth.generate(RENDER_RATE // 10)

    def playable(self, prog: Program) -> frozenset[int]:
        """Keys of ``prog``'s range that produce sound (checked once per program)."""
        if prog.program not in self._playable:
            keys = set()
            for key in range(prog.low, prog.high + 1):
                self._silence()
                self.synth.program_select(0, self.sfid, 0, prog.program)
                self.synth.noteon(0, key, 100)
                probe = np.frombuffer(self.synth.generate(RENDER_RATE // 10), dtype=np.float32)
                if np.abs(probe).max() > 1e-3:
                    keys.add(key)
            self._silence()
            if not keys:
                raise DemoError(f"GM program {prog.program} ({prog.name}) renders silence")
            self._playable[prog.program] = frozenset(keys)
        return self._playable[prog.program]

    def gain(self, prog: Program) -> float:
        if prog.program not in self._gain:
            keys = sorted(self.playable(prog))
            mid = keys[len(keys) // 2]
            ref = self._render(prog.program, [Note(mid, 100, 0.0, 0.8)], 1.0)
            peak = float(np.abs(ref).max())
            if peak < 1e-6:
                raise DemoError(f"GM program {prog.program} ({prog.name}) renders silence")
            self._gain[prog.program] = REFERENCE_PEAK / peak
        return self._gain[prog.program]

    def clip(self, prog: Program, notes: list[Note]) -> np.ndarray:
        gain = self.gain(prog)
        audio = self._render(prog.program, notes, INSTRUMENT_CLIP_SECONDS) * gain
        n = int(round(INSTRUMENT_CLIP_SECONDS * SAMPLE_RATE))
        audio = audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))
        # A short fade-out so a note still sounding at the cut does not end in a click.
        fade = int(0.03 * SAMPLE_RATE)
        audio[-fade:] *= np.linspace(1.0, 0.0, fade)
        return audio


def _instrument_jobs(clips_per_group: int):
    for label, programs in INSTRUMENT_FAMILIES.items():
        for prog in programs:
            for index in range(clips_per_group):
                yield label, prog, index


# ---------------------------------------------------------------------------------------
# Speech
# ---------------------------------------------------------------------------------------

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


@dataclass(frozen=True)
class Voice:
    """One eSpeak NG voice: an English accent plus a voice variant (``!v`` file)."""

    group: str  # file-name-safe id, used as the split group
    name: str  # what espeak_SetVoiceByName receives


VOICES: tuple[Voice, ...] = (
    Voice("us-m1", "en-us+m1"),
    Voice("us-f2", "en-us+f2"),
    Voice("us-m3", "en-us+m3"),
    Voice("us-f4", "en-us+f4"),
    Voice("gb-m2", "en+m2"),
    Voice("gb-f1", "en+f1"),
    Voice("scot-m4", "en-gb-scotland+m4"),
    Voice("rp-f3", "en-gb-x-rp+f3"),
    Voice("carib-m5", "en-029+m5"),
    Voice("nyc-f5", "en-us-nyc+f5"),
    Voice("us-klatt", "en-us+klatt2"),
    Voice("gb-klatt", "en+klatt4"),
)

SPEECH_CLIP_SECONDS = 1.0
SPEECH_CLIPS_PER_GROUP = 6  # 10 keywords x 12 voices x 6 = 720 clips

# eSpeak NG keeps synthesis state (pitch/flutter phase) between utterances inside one
# process, even after espeak_ng_SetRandSeed, so an utterance depends on what was spoken
# before it. Each voice is therefore rendered by a fresh helper process that speaks its
# fixed list of requests in order: the result depends only on that list. The helper needs
# nothing but the standard library, so it starts in a few tens of milliseconds.
_ESPEAK_WORKER = r"""
import ctypes, json, struct, sys
lib_path, data_path = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(lib_path)
lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                             ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
SYNCHRONOUS, RATE, PITCH, RANGE, POS_CHARACTER, CHARS_UTF8 = 2, 1, 3, 4, 1, 1
rate = lib.espeak_Initialize(SYNCHRONOUS, 0, data_path.encode(), 0)
if rate <= 0:
    sys.exit("espeak_Initialize failed")
pcm = []
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
@CALLBACK
def on_audio(wav, n, events):
    if wav and n > 0:
        pcm.append(ctypes.string_at(wav, 2 * n))
    return 0
lib.espeak_SetSynthCallback(on_audio)
out = sys.stdout.buffer
out.write(struct.pack("<i", rate))
for req in json.loads(sys.stdin.read()):
    if lib.espeak_SetVoiceByName(req["voice"].encode()) != 0:
        sys.exit("unknown eSpeak voice: " + req["voice"])
    lib.espeak_SetParameter(RATE, req["rate"], 0)
    lib.espeak_SetParameter(PITCH, req["pitch"], 0)
    lib.espeak_SetParameter(RANGE, req["range"], 0)
    lib.espeak_ng_SetRandSeed(req["seed"])
    pcm.clear()
    text = req["text"].encode()
    if lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None) != 0:
        sys.exit("espeak_Synth failed for " + repr(req["text"]))
    data = b"".join(pcm)
    out.write(struct.pack("<i", len(data)) + data)
out.flush()
"""


def _espeak_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError:
        raise DemoError("espeakng-loader is not installed: pip install espeakng-loader") from None
    lib_path = espeakng_loader.get_library_path()
    try:
        data_path = espeakng_loader.get_data_path()
    except RuntimeError:
        raise DemoError("espeakng-loader has no espeak-ng-data folder") from None
    if not Path(lib_path).is_file():
        raise DemoError(f"eSpeak NG library not found: {lib_path}")
    return lib_path, data_path


def _espeak_render(requests: list[dict]) -> list[tuple[np.ndarray, int]]:
    """Speak ``requests`` in order in a fresh helper process; returns (int16 pcm, rate) each."""
    lib_path, data_path = _espeak_paths()
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _ESPEAK_WORKER, lib_path, data_path],
        input=json.dumps(requests).encode(), capture_output=True, check=False,
    )
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DemoError(f"eSpeak NG failed: {reason[-1] if reason else f'exit {proc.returncode}'}")
    buf = proc.stdout
    (rate,), pos = struct.unpack_from("<i", buf, 0), 4
    out = []
    for _ in requests:
        (size,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        out.append((np.frombuffer(buf, dtype="<i2", count=size // 2, offset=pos).copy(), rate))
        pos += size
    return out


def _speech_request(keyword: str, voice: Voice, index: int, seed: int, attempt: int) -> dict:
    rng = np.random.default_rng([seed, 1, KEYWORDS.index(keyword), VOICES.index(voice), index, attempt])
    return {
        "text": keyword,
        "voice": voice.name,
        "rate": int(rng.integers(130, 211)),  # words per minute
        "pitch": int(rng.integers(25, 76)),  # 0-100, 50 = the voice's own
        "range": int(rng.integers(20, 81)),  # intonation range, 0-100
        "seed": int(rng.integers(0, 2**31 - 1)),
        # placement and level of the word inside the clip
        "offset": float(rng.uniform(0.0, 1.0)),
        "peak": float(rng.uniform(0.3, 0.8)),
    }


def _speech_clip(pcm: np.ndarray, rate: int, req: dict) -> np.ndarray | None:
    """Trim the utterance, resample to 16 kHz and place it in a 1 s clip; None if unusable."""
    import soxr

    audio = pcm.astype(np.float64) / 32768.0
    loud = np.nonzero(np.abs(audio) > 0.01 * max(np.abs(audio).max(), 1e-9))[0]
    if len(loud) == 0 or np.abs(audio).max() < SILENT_PEAK:
        return None
    audio = audio[max(loud[0] - int(0.01 * rate), 0): loud[-1] + int(0.02 * rate)]
    audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    n = int(round(SPEECH_CLIP_SECONDS * SAMPLE_RATE))
    margin = int(0.02 * SAMPLE_RATE)
    if len(audio) > n - 2 * margin:
        return None  # too slow to fit: re-draw
    start = margin + int(req["offset"] * (n - 2 * margin - len(audio)))
    # Short raised-cosine ramps: the trim points cut through low-level sound, not silence.
    ramp = int(0.005 * SAMPLE_RATE)
    window = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
    audio[:ramp] *= window
    audio[-ramp:] *= window[::-1]
    clip = np.zeros(n)
    clip[start: start + len(audio)] = audio * (req["peak"] / np.abs(audio).max())
    return clip


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


def _to_pcm16(audio: np.ndarray) -> np.ndarray | None:
    """Quantise to int16 with a limiter at -1 dBFS; None for a silent or broken clip."""
    if not np.all(np.isfinite(audio)):
        return None
    peak = float(np.abs(audio).max())
    if peak < SILENT_PEAK:
        return None
    if peak > PEAK_LIMIT:
        audio = audio * (PEAK_LIMIT / peak)
    return np.round(audio * 32767.0).astype(np.int16)


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    import soundfile as sf

    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _summarise(rows: list[tuple[str, str, str]], seconds_per_clip: float) -> dict:
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


def _cached_summary(out_dir: Path, params: dict) -> dict | None:
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
        kind: ``"instruments"`` (10 GM families, 800 clips of 2 s by default) or
            ``"speech"`` (10 keywords spoken by 12 eSpeak NG voices, 720 clips of 1 s).
        seed: seeds every clip's random draws; the same seed gives identical files.
        progress: show a tqdm progress bar.
        clips_per_group: clips per (label, group) pair; default 16 (instruments: per GM
            program) or 6 (speech: per keyword and voice). Small values make tiny builds
            for tests.
        soundfont: instruments only; a General-MIDI .sf2 to use instead of the
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
    default_per_group = INSTRUMENT_CLIPS_PER_GROUP if kind == "instruments" else SPEECH_CLIPS_PER_GROUP
    per_group = default_per_group if clips_per_group is None else int(clips_per_group)
    if per_group < 1:
        raise DemoError(f"clips_per_group must be >= 1, got {clips_per_group!r}")
    out_dir = Path(out_dir)

    if kind == "instruments":
        sf_path = _soundfont_path(soundfont)
        _import_tinysoundfont()
        source = {
            "soundfont": sf_path.name,
            "soundfont_sha256": _sha256(sf_path),
            "synth": f"tinysoundfont {_version('tinysoundfont')}",
        }
    else:
        if soundfont is not None:
            raise DemoError("soundfont only applies to kind='instruments'")
        lib_path, _ = _espeak_paths()
        source = {
            "synth": f"eSpeak NG via espeakng-loader {_version('espeakng-loader')}",
            "library_sha256": _sha256(lib_path),
        }
    params = {
        "kind": kind,
        "seed": int(seed),
        "clips_per_group": per_group,
        "sample_rate": SAMPLE_RATE,
        "format_version": FORMAT_VERSION,
        "source": source,
    }

    cached = _cached_summary(out_dir, params)
    if cached is not None:
        return {**cached, "out_dir": str(out_dir), "cached": True,
                "build_seconds": round(time.perf_counter() - t0, 3)}
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoError(f"{out_dir} exists and is not a folder; choose another output folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / INFO_FILE).is_file():
        # Never delete a folder this module did not write.
        raise DemoError(f"{out_dir} exists and is not a demo build; choose another output folder")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_folders(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if kind == "instruments":
            rows, skipped = _build_instruments(tmp, sf_path, int(seed), per_group, progress)
            clip_seconds = INSTRUMENT_CLIP_SECONDS
        else:
            rows, skipped = _build_speech(tmp, int(seed), per_group, progress)
            clip_seconds = SPEECH_CLIP_SECONDS
        rows.sort()
        with open(tmp / META_FILE, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "label", "group"])
            writer.writerows(rows)
        summary = {**_summarise(rows, clip_seconds), "skipped": skipped}
        info = {"generator": "tokenlm.demo", "params": params, "summary": summary}
        # Written last: its presence (with meta.csv) marks a complete build.
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "out_dir": str(out_dir), "cached": False,
            "build_seconds": round(time.perf_counter() - t0, 3)}


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


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled, dynamic_ncols=True)


def _build_instruments(tmp: Path, sf_path: Path, seed: int, per_group: int, progress: bool):
    renderer = _InstrumentRenderer(sf_path)
    rows, skipped = [], 0
    jobs = list(_instrument_jobs(per_group))
    with _progress_bar(len(jobs), "demo instruments", progress) as bar:
        for label, prog, index in jobs:
            pcm = None
            for attempt in range(MAX_ATTEMPTS):
                # One Generator per clip (not one per build): a clip does not change when
                # others are added, removed or re-drawn.
                rng = np.random.default_rng([seed, 0, prog.program, index, attempt])
                notes = draw_phrase(rng, prog, renderer.playable(prog))
                pcm = _to_pcm16(renderer.clip(prog, notes))
                if pcm is not None:
                    break
            if pcm is None:
                skipped += 1
            else:
                group = f"gm{prog.program:03d}"
                rel = f"{label}/{label}_{group}_{index:03d}.wav"
                (tmp / label).mkdir(exist_ok=True)
                _write_wav(tmp / rel, pcm)
                rows.append((rel, label, group))
            bar.update(1)
    return rows, skipped


def _build_speech(tmp: Path, seed: int, per_group: int, progress: bool):
    rows, skipped = [], 0
    with _progress_bar(len(VOICES) * len(KEYWORDS) * per_group, "demo speech", progress) as bar:
        for voice in VOICES:
            cells = [(kw, i) for i in range(per_group) for kw in KEYWORDS]
            done: dict[tuple[str, int], np.ndarray] = {}
            for attempt in range(MAX_ATTEMPTS):
                todo = [cell for cell in cells if cell not in done]
                if not todo:
                    break
                reqs = [_speech_request(kw, voice, i, seed, attempt) for kw, i in todo]
                for cell, req, (pcm, rate) in zip(todo, reqs, _espeak_render(reqs)):
                    clip = _speech_clip(pcm, rate, req)
                    pcm16 = None if clip is None else _to_pcm16(clip)
                    if pcm16 is not None:
                        done[cell] = pcm16
            for kw, i in cells:
                if (kw, i) not in done:
                    skipped += 1
                else:
                    rel = f"{kw}/{kw}_{voice.group}_{i:03d}.wav"
                    (tmp / kw).mkdir(exist_ok=True)
                    _write_wav(tmp / rel, done[(kw, i)])
                    rows.append((rel, kw, voice.group))
                bar.update(1)
    return rows, skipped
