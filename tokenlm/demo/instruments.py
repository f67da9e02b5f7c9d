"""Instrument clips: General-MIDI programs playing short phrases, rendered with tinysoundfont.

Label = GM instrument family (10 classes), group = GM program (5 per family), so a
group-aware split never hears the same instrument on both sides. The soundfont is
``TimGM6mb.sf2`` from the ``pretty_midi`` wheel unless the caller names another one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlm.demo.common import MAX_ATTEMPTS, SAMPLE_RATE, Clip, DemoError, to_pcm16


@dataclass(frozen=True)
class Program:
    """One General-MIDI program and the MIDI pitch range it is played in."""

    program: int  # 0-based GM program number
    name: str
    low: int  # lowest MIDI key drawn
    high: int  # highest MIDI key drawn (inclusive)


# Ten GM families, five programs each (so a group-aware split keeps 3/1/1 per family).
# Ranges keep each instrument near its real compass, so a program is not recognisable only
# by being played far outside it.
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


def soundfont_path(soundfont: str | Path | None) -> Path:
    if soundfont is not None:
        path = Path(soundfont)
        if not path.is_file():
            raise DemoError(f"soundfont not found: {path}")
        return path
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the demo's GM soundfont comes with pretty_midi, which is not installed: "
                        "pip install 'tokenlm[demo]'")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "TimGM6mb.sf2"
        if path.is_file():
            return path
    raise DemoError("TimGM6mb.sf2 not found inside the installed pretty_midi package")


def import_tinysoundfont():
    try:
        import tinysoundfont
    except ImportError:
        raise DemoError("the demo's GM renderer tinysoundfont is not installed: make demo-renderer "
                        "(pip install --no-deps tinysoundfont; its pyaudio requirement is for playback only)") from None
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


class InstrumentRenderer:
    """Renders phrases with one tinysoundfont Synth, resetting it between clips."""

    def __init__(self, soundfont: Path):
        tsf = import_tinysoundfont()
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


def instrument_clips(sf_path: Path, seed: int, per_group: int) -> Iterator[Clip]:
    """Every clip of a build, family by family and program by program."""
    renderer = InstrumentRenderer(sf_path)
    for label, prog, index in _instrument_jobs(per_group):
        pcm = None
        for attempt in range(MAX_ATTEMPTS):
            # One Generator per clip (not one per build): a clip does not change when
            # others are added, removed or re-drawn.
            rng = np.random.default_rng([seed, 0, prog.program, index, attempt])
            notes = draw_phrase(rng, prog, renderer.playable(prog))
            pcm = to_pcm16(renderer.clip(prog, notes))
            if pcm is not None:
                break
        yield Clip(label, f"gm{prog.program:03d}", index, pcm)
