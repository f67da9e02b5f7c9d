"""Pitch clips: one held note (1 s) of a pitched General-MIDI program, rendered with
tinysoundfont.

Label = pitch class (C, Db, ... B: 12 classes), group = GM program, so a group-aware split
tests on instruments never heard in training. Pitch class rather than MIDI note: every
program can play all twelve classes in its own register (a MIDI-note label would give
each instrument only the notes of its compass, so timbre would predict the label), and the
octave of each note is drawn at random so that register does not give the class away.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tokenlm.demo.common import MAX_ATTEMPTS, SAMPLE_RATE, Clip, to_pcm16
from tokenlm.demo.instruments import VELOCITY_LEVELS, InstrumentRenderer, Note, Program
from tokenlm.demo.music import FAMILY_REGISTERS

PITCH_CLASSES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
# Every other program of the pitched GM families (0-111), less those whose pitch is
# ambiguous or wrong: 86 (lead "fifths": two pitches), the synth effects 96, 98, 100, 102,
# and 78 (whistle), which TimGM6mb plays three semitones sharp of the key asked for.
_UNCLEAR_PITCH = {78, 86, 96, 98, 100, 102}
PITCH_PROGRAMS: tuple[Program, ...] = tuple(
    Program(p, f"gm{p:03d}", *FAMILY_REGISTERS[p // 8]) for p in range(0, 112, 2) if p not in _UNCLEAR_PITCH
)
PITCH_CLIP_SECONDS = 1.0
PITCH_CLIPS_PER_GROUP = 1  # 12 pitch classes x 50 programs = 600 clips


def draw_note(rng: np.random.Generator, keys: list[int]) -> Note:
    """One note: a key drawn from ``keys`` (one pitch class, any octave), held ~0.5-0.8 s."""
    key = int(keys[int(rng.integers(len(keys)))])
    velocity = int(np.clip(int(rng.choice(VELOCITY_LEVELS)) + rng.integers(-10, 11), 1, 127))
    return Note(key, velocity, float(rng.uniform(0.02, 0.1)), float(rng.uniform(0.5, 0.8)))


def pitch_clips(sf_path: Path, seed: int, per_group: int) -> Iterator[Clip]:
    """Every clip of a build, program by program and pitch class by pitch class."""
    renderer = InstrumentRenderer(sf_path)
    n = int(round(PITCH_CLIP_SECONDS * SAMPLE_RATE))
    fade = int(0.03 * SAMPLE_RATE)
    for prog in PITCH_PROGRAMS:
        playable = renderer.playable(prog)
        for pc, label in enumerate(PITCH_CLASSES):
            keys = sorted(k for k in playable if k % 12 == pc)
            for index in range(per_group):
                pcm = None
                for attempt in range(MAX_ATTEMPTS if keys else 0):
                    # kind 2 (instruments draw from 0, speech from 1): streams never meet
                    rng = np.random.default_rng([seed, 2, prog.program, pc, index, attempt])
                    audio = renderer._render(prog.program, [draw_note(rng, keys)], PITCH_CLIP_SECONDS)
                    audio = audio[:n] * renderer.gain(prog)
                    audio[-fade:] *= np.linspace(1.0, 0.0, fade)
                    pcm = to_pcm16(audio)
                    if pcm is not None:
                        break
                yield Clip(label, f"gm{prog.program:03d}", index, pcm)
