"""What both demo kinds share: the clip they yield (16 kHz int16 within level limits, a
rejected draw retried up to MAX_ATTEMPTS times) and DemoError."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tokenlm.core.errors import TokenlmError

SAMPLE_RATE = 16000

# A clip may never be louder than this (-1 dBFS) nor have a peak below SILENT_PEAK (-40 dBFS).
PEAK_LIMIT = 10 ** (-1 / 20)
SILENT_PEAK = 10 ** (-40 / 20)
MAX_ATTEMPTS = 5  # re-draws of a rejected clip before it is skipped


class Clip(NamedTuple):
    """One clip of a build, as a kind's generator yields it."""

    label: str
    group: str
    index: int  # the clip's number within its (label, group) pair
    pcm: np.ndarray | None  # int16; None for a clip given up after MAX_ATTEMPTS draws


class DemoError(TokenlmError, ValueError):
    """The demo set cannot be built (missing soundfont or library, bad arguments)."""


def to_pcm16(audio: np.ndarray) -> np.ndarray | None:
    """Quantise to int16 with a limiter at -1 dBFS; None for a silent or broken clip."""
    if not np.all(np.isfinite(audio)):
        return None
    peak = float(np.abs(audio).max())
    if peak < SILENT_PEAK:
        return None
    if peak > PEAK_LIMIT:
        audio = audio * (PEAK_LIMIT / peak)
    return np.round(audio * 32767.0).astype(np.int16)
