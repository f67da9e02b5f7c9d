"""How the probe reads a clip with the code LM (``probe.lm_reading``).

- ``once``: the clip from its BOS, each state seeing the codes so far: causal states for a
  next-code LM, both ways for a masked-code LM (which reads the whole clip at once anyway);
- ``twice`` (causal LMs): the clip fed two times in a row, ``[BOS, c0..c_{n-1}, c0..c_{n-1}]``,
  and only the second reading's states kept, so every state has seen the whole clip once
  before its own position (a causal LM's way to read a clip both ways, with no training).
  No BOS between the readings: the LM takes the clip as one longer clip, which it has seen in
  training; a BOS would tell it a new, unrelated clip starts.
- ``auto``: every reading that applies, the LM rows of the one whose best layer is best on
  val kept, the choice and each reading's val accuracy recorded on ``lm_best``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import read_json
from tokenlm.run.rundir import CONFIG

__all__ = ["READINGS", "AUTO_READING", "reading_candidates", "read_codes", "keep_reading", "reading_title", "lm_objective"]

READINGS = ("once", "twice")
AUTO_READING = "auto"


def reading_candidates(setting: str, objective: str) -> tuple[str, ...]:
    """The readings to try for an LM of ``objective``: the one ``setting`` names, or with
    ``auto`` every reading that applies (a masked-code LM reads both ways already: once)."""
    if setting not in READINGS + (AUTO_READING,):
        raise ValueError(f"lm_reading takes one of {', '.join(READINGS + (AUTO_READING,))}, got {setting!r}")
    if objective == "masked":
        return ("once",)
    return READINGS if setting == AUTO_READING else (setting,)


def read_codes(clips: list[np.ndarray], reading: str) -> list[np.ndarray]:
    """What the LM is fed for each clip under ``reading``."""
    if reading == "twice":
        return [np.concatenate([c, c]) for c in clips]
    return list(clips)


def keep_reading(states, reading: str):
    """The states (layers + 1, T', d) of the reading that is kept: the second half (the
    second reading) for ``twice``, all of them for ``once``."""
    return states[:, states.shape[1] // 2:] if reading == "twice" else states


def lm_objective(lm_dir: Path) -> str:
    """The objective a saved LM was trained with (LMs from before objectives: next)."""
    try:
        return str(read_json(Path(lm_dir) / CONFIG).get("tokenlm", {}).get("objective", "next"))
    except (ArtifactError, OSError, AttributeError):
        return "next"


def reading_title(reading: str, objective: str) -> str:
    if reading == "twice":
        return "clip read twice, second reading"
    return "bidirectional" if objective == "masked" else "causal"
