"""Corpus music: random multi-track songs (melody, chords, bass, arpeggios, drums) over all
128 General-MIDI programs and the drum kits of TimGM6mb, rendered with tinysoundfont.

A song has a tempo, metre, key, scale and a looping chord progression; each track plays
its role on a beat grid in its own register, level and articulation. Tracks are rendered
one at a time from a silenced synth and mixed in numpy, so a file depends only on its own
draws, never on what the process rendered before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlm.demo.common import SAMPLE_RATE
from tokenlm.demo.instruments import import_tinysoundfont

# 32 kHz, not the demo's 48 kHz: twice as fast, and tinysoundfont's aliasing images that
# fold below 8 kHz (what survives the resampling to 16 kHz) come from above 24 kHz, where
# the soundfont's samples carry little energy.
RENDER_RATE = 32000
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)  # the bank-128 presets of TimGM6mb
# Register (lowest, highest MIDI key) of each GM family (program // 8).
FAMILY_REGISTERS = ((36, 84), (55, 96), (36, 84), (40, 76), (28, 55), (36, 84), (40, 84),
                    (40, 80), (45, 84), (60, 96), (45, 84), (40, 80), (40, 80), (45, 84),
                    (40, 76), (40, 80))
SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
REFERENCE_PEAK = 0.25  # each program's reference note is scaled to this peak
# GM drum keys by role
KICKS, SNARES, HATS = (35, 36), (38, 40, 39), (42, 44, 46)
CYMBALS, TOMS, HAND = (49, 51, 57, 59), (41, 43, 45, 47, 48, 50), (54, 56, 60, 61, 62, 63, 64, 69, 70)


@dataclass(frozen=True)
class Event:
    key: int
    velocity: int
    on: float  # seconds
    off: float


@dataclass(frozen=True)
class Track:
    program: int  # GM program, or the drum kit's preset when drums
    drums: bool
    level: float  # linear mix gain
    events: tuple[Event, ...]


def draw_song(rng: np.random.Generator, seconds: float, *, drums_only: bool = False) -> list[Track]:
    """The tracks of a song of ``seconds``; ``drums_only``: one drum-kit track."""
    beat = 60.0 / float(rng.uniform(60, 180))
    metre = int(rng.choice([3, 4, 4, 6]))
    tonic = int(rng.integers(0, 12))
    scale = list(SCALES.values())[int(rng.integers(len(SCALES)))]
    progression = [int(d) for d in rng.choice(7, size=int(rng.choice([2, 4, 4, 8])))]
    progression[0] = 0
    song = _Song(rng, seconds, beat, metre, tonic, scale, progression)
    if drums_only:
        return [song.drums()]
    roles = ["melody"] + [r for r in ("chords", "bass", "arpeggio", "drums") if rng.random() < 0.45]
    if rng.random() < 0.15:  # sometimes a solo instrument without a melody: chords alone
        roles[0] = "chords"
    return [getattr(song, role)() for role in roles]


class _Song:
    """Draws each track of one song on its shared beat grid and harmony."""

    def __init__(self, rng, seconds, beat, metre, tonic, scale, progression):
        self.rng, self.seconds, self.beat, self.metre = rng, seconds, beat, metre
        self.tonic, self.scale, self.progression = tonic, scale, progression
        self.start = float(rng.uniform(0.0, 0.4))

    def _chord_at(self, t: float) -> int:
        bar = int((t - self.start) / (self.beat * self.metre))
        return self.progression[bar % len(self.progression)]

    def _pitch(self, degree: int, octave_key: int) -> int:
        octave, step = divmod(degree, 7)
        return octave_key + 12 * octave + self.scale[step]

    def _program(self, choices=None) -> tuple[int, int, int]:
        program = int(self.rng.integers(128) if choices is None else self.rng.choice(choices))
        low, high = FAMILY_REGISTERS[program // 8]
        return program, low, high

    def _level(self, low_db: float, high_db: float) -> float:
        return float(10 ** (self.rng.uniform(low_db, high_db) / 20))

    def _times(self, durations: tuple[float, ...], rest: float):
        """(on, length) note slots on the beat grid until the song ends; some are rests."""
        t = self.start
        while t < self.seconds - 0.3:
            length = float(self.rng.choice(durations)) * self.beat
            if self.rng.random() >= rest:
                yield t, length
            t += length

    def _velocity(self, base: int, t: float) -> int:
        downbeat = abs(((t - self.start) / self.beat) % self.metre) < 1e-6
        return int(np.clip(base + (12 if downbeat else 0) + self.rng.integers(-8, 9), 1, 127))

    def _off(self, on: float, length: float, legato: float) -> float:
        return min(on + max(length * legato, 0.05), self.seconds - 0.2)

    def melody(self) -> Track:
        program, low, high = self._program()
        base_key = low + 12 * int(self.rng.integers(0, max((high - low - 12) // 12, 0) + 1)) + self.tonic
        degree, base = int(self.rng.integers(0, 7)), int(self.rng.integers(55, 121))
        legato = float(self.rng.uniform(0.4, 1.0))
        events = []
        for on, length in self._times((0.25, 0.5, 0.5, 1, 1, 1.5, 2), rest=0.15):
            degree = int(np.clip(degree + self.rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3, 4]), -3, 12))
            key = int(np.clip(self._pitch(degree, base_key), low, high))
            events.append(Event(key, self._velocity(base, on), on, self._off(on, length, legato)))
        return Track(program, False, self._level(-4, 0), tuple(events))

    def chords(self) -> Track:
        program, low, high = self._program()
        root_key = low + 12 + self.tonic
        size = int(self.rng.choice([3, 3, 4]))
        base = int(self.rng.integers(45, 101))
        pulse = float(self.rng.choice([1, 2, self.metre]))
        events = []
        for on, length in self._times((pulse,), rest=0.05):
            degree = self._chord_at(on)
            for i in range(size):
                key = int(np.clip(self._pitch(degree + 2 * i, root_key), low, high))
                events.append(Event(key, self._velocity(base, on), on, self._off(on, length, 0.9)))
        return Track(program, False, self._level(-12, -4), tuple(events))

    def arpeggio(self) -> Track:
        program, low, high = self._program()
        root_key = low + 12 + self.tonic
        base = int(self.rng.integers(45, 101))
        step = float(self.rng.choice([0.25, 0.5]))
        pattern = [0, 2, 4, 7, 4, 2] if self.rng.random() < 0.5 else [0, 2, 4, 2]
        events = []
        for i, (on, length) in enumerate(self._times((step,), rest=0.0)):
            key = int(np.clip(self._pitch(self._chord_at(on) + pattern[i % len(pattern)], root_key), low, high))
            events.append(Event(key, self._velocity(base, on), on, self._off(on, length, 0.8)))
        return Track(program, False, self._level(-12, -5), tuple(events))

    def bass(self) -> Track:
        program, low, high = self._program(list(range(32, 40)) + [0, 19, 42, 43, 58, 70, 87])
        low, high = min(low, 28), min(high, 55)
        root_key = low + (self.tonic - low) % 12
        base = int(self.rng.integers(60, 111))
        events = []
        for on, length in self._times((1, 1, 2, 0.5), rest=0.1):
            degree = self._chord_at(on) + int(self.rng.choice([0, 0, 0, 4, 7]))
            key = int(np.clip(self._pitch(degree, root_key), low, high))
            events.append(Event(key, self._velocity(base, on), on, self._off(on, length, 0.85)))
        return Track(program, False, self._level(-8, -2), tuple(events))

    def drums(self) -> Track:
        rng = self.rng
        kit = int(rng.choice(DRUM_KITS))
        steps = self.metre * 4  # sixteenths per bar
        kick = rng.random(steps) < np.where(np.arange(steps) % 4 == 0, 0.8, 0.12)
        snare = rng.random(steps) < np.where(np.arange(steps) % 8 == 4, 0.9, 0.06)
        hat_every = int(rng.choice([1, 2, 2, 4]))
        hand = int(rng.choice(HAND)) if rng.random() < 0.4 else None
        keys = int(rng.choice(KICKS)), int(rng.choice(SNARES)), int(rng.choice(HATS)), int(rng.choice(CYMBALS))
        swing = float(rng.uniform(0.0, 0.3)) * self.beat / 4
        base = int(rng.integers(70, 121))
        events = []
        sixteenth = self.beat / 4
        n_steps = int((self.seconds - 0.5 - self.start) / sixteenth)
        for s in range(n_steps):
            on = self.start + s * sixteenth + (swing if s % 2 else 0.0)
            i, bar = s % steps, s // steps
            fill = bar % 4 == 3 and i >= steps - 4 and rng.random() < 0.6
            hits = []
            if fill:
                hits.append(int(rng.choice(TOMS)))
            else:
                hits += [keys[0]] * bool(kick[i]) + [keys[1]] * bool(snare[i])
                hits += [keys[2]] * (i % hat_every == 0)
                if hand is not None and rng.random() < 0.3:
                    hits.append(hand)
            if i == 0 and bar % 4 == 0 and rng.random() < 0.5:
                hits.append(keys[3])
            for key in hits:
                velocity = int(np.clip(base + rng.integers(-20, 11) - (15 if key in HATS else 0), 1, 127))
                events.append(Event(key, velocity, on, on + 0.05))
        return Track(kit, True, self._level(-6, 0), tuple(events))


class MusicRenderer:
    """Renders tracks with one tinysoundfont Synth, silenced between tracks."""

    def __init__(self, soundfont: Path):
        tsf = import_tinysoundfont()
        self.synth = tsf.Synth(samplerate=RENDER_RATE)
        self.sfid = self.synth.sfload(str(soundfont))
        self._gain: dict[tuple[int, bool], float] = {}

    def song(self, tracks: list[Track], seconds: float) -> np.ndarray:
        """The mix of ``tracks`` at 16 kHz, ``seconds`` long."""
        import soxr

        n = int(round(seconds * RENDER_RATE))
        mix = np.zeros(n)
        for track in tracks:
            mix += self._render(track, n) * (track.level * self._reference_gain(track.program, track.drums))
        return soxr.resample(mix, RENDER_RATE, SAMPLE_RATE, quality="HQ")[: int(round(seconds * SAMPLE_RATE))]

    def _select(self, program: int, drums: bool) -> None:
        self.synth.sounds_off()
        self.synth.generate(RENDER_RATE // 10)  # let the fade of every voice end
        self.synth.program_select(0, self.sfid, 128 if drums else 0, program, drums)

    def _reference_gain(self, program: int, drums: bool) -> float:
        """Scales a program so that its reference note peaks at REFERENCE_PEAK."""
        if (program, drums) not in self._gain:
            key = 38 if drums else sum(FAMILY_REGISTERS[program // 8]) // 2
            probe = self._render(Track(program, drums, 1.0, (Event(key, 100, 0.0, 0.4),)), RENDER_RATE // 2)
            peak = float(np.abs(probe).max())
            self._gain[(program, drums)] = REFERENCE_PEAK / peak if peak > 1e-4 else 1.0
        return self._gain[(program, drums)]

    def _render(self, track: Track, n: int) -> np.ndarray:
        synth = self.synth
        self._select(track.program, track.drums)
        points = []
        for e in track.events:
            points.append((int(e.on * RENDER_RATE), 1, e.key, e.velocity))
            points.append((int(e.off * RENDER_RATE), 0, e.key, 0))
        points.sort()  # note-offs before note-ons at one instant
        chunks, pos = [], 0
        for at, is_on, key, velocity in points:
            at = min(at, n)
            if at > pos:
                chunks.append(np.frombuffer(synth.generate(at - pos), dtype=np.float32).copy())
                pos = at
            if is_on:
                synth.noteon(0, key, velocity)
            else:
                synth.noteoff(0, key)
        if n > pos:
            chunks.append(np.frombuffer(synth.generate(n - pos), dtype=np.float32).copy())
        stereo = np.concatenate(chunks)  # interleaved left, right
        return (stereo[0::2] + stereo[1::2]).astype(np.float64) * 0.5
