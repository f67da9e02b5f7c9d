"""What every dataset layout yields: a Clip (one input file and what is known about it before
decoding) and the split names tokenlm uses."""

from __future__ import annotations

from dataclasses import dataclass

from tokenlm.core.errors import ConfigError

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".au", ".aif", ".aiff", ".opus"}
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test", "eval": "test",
                 "evaluation": "test"}


@dataclass(frozen=True)
class Clip:
    """One input file and what is known about it before decoding."""

    id: str
    path: str
    label: str | None = None
    group: str | None = None
    fold: int | None = None
    split: str | None = None
    start: float | None = None  # a segment of the file: start/end seconds (None: whole file)
    end: float | None = None

    def span(self) -> dict:
        """A segment's start/end for its manifest row; nothing for a whole file."""
        return {} if self.start is None and self.end is None else {"start": self.start, "end": self.end}


def split_name(value, where) -> str | None:
    """The canonical split name (train, val, test) of ``value``, None for none; ``where`` names the
    source in the error."""
    if value in (None, ""):
        return None
    name = SPLIT_ALIASES.get(str(value).lower())
    if name is None:
        raise ConfigError(f"{where}: unknown split '{value}' (use train, val or test)")
    return name
