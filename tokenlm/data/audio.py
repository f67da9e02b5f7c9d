"""Audio loading: any file soundfile reads, to mono float32 at the configured sample rate.

``load_audio`` decodes a file whole; ``audio_blocks`` streams it in blocks (soundfile blocks
through soxr's streaming resampler), so a long recording costs one block of memory, not its
length. Every way a file can be unusable raises AudioError naming the file and the reason,
so a corpus run can record the clip as skipped and carry on.

Every function takes a file path or a ``Span`` of a file (a segment of a long recording,
``audio_source``): a span is decoded as if it were a file of its own, reading only its frames.
A file may also be a member of a tar (a ``TarMember``, or the path string that names one,
``tokenlm.data.tar_member``): soundfile reads its byte range of the tar in place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tokenlm.core.errors import AudioError
from tokenlm.data.tar_member import TarMember

# Peak below this (about -100 dBFS) counts as digital silence: nothing for a tokenizer to learn.
SILENCE_PEAK = 1e-5
# Seconds of audio decoded at a time by ``audio_blocks``: 5.5 MB of 48 kHz stereo float32.
BLOCK_SECONDS = 15.0


@dataclass(frozen=True)
class Span:
    """Seconds ``start`` to ``end`` of the file at ``path`` (``end`` None: to its end; the
    path may name a tar member)."""

    path: str
    start: float = 0.0
    end: float | None = None

    def __str__(self) -> str:  # how errors and logs name it
        return f"{self.path} [{self.start:g}-{'end' if self.end is None else f'{self.end:g}'} s]"

    def frames(self, file_rate: int, file_frames: int) -> tuple[int, int]:
        """(first, stop) frame of the span in a file of ``file_frames`` frames at ``file_rate``."""
        stop = file_frames if self.end is None else min(file_frames, round(self.end * file_rate))
        return min(round(self.start * file_rate), stop), stop


def audio_source(path: str | Path, start: float | None = None,
                 end: float | None = None) -> str | Path | Span | TarMember:
    """What to decode for a clip: its file (a TarMember when its path names one), or the Span
    of it that its start/end name."""
    if start is None and end is None:
        return TarMember.parse(path) or path
    return Span(str(path), float(start or 0.0), None if end is None else float(end))


def row_source(row: dict) -> str | Span | TarMember:
    """What to decode for a manifest row (path, and start/end for a segment)."""
    return audio_source(row["path"], row.get("start"), row.get("end"))


def load_audio(path: str | Path | Span | TarMember, sample_rate: int, min_samples: int = 1) -> np.ndarray:
    """Decode ``path`` (a file or a Span of one), mix to mono, resample to ``sample_rate``;
    return float32 samples (T,).

    Raises AudioError for undecodable, empty, non-finite, silent or too-short audio.
    """
    with _opened(path) as file:
        try:
            if isinstance(path, Span):  # only the span's frames are read
                info = sf.info(file)
                first, stop = path.frames(info.samplerate, info.frames)
                samples, file_rate = sf.read(_rewound(file), start=first, stop=stop, dtype="float32",
                                             always_2d=True)
            else:
                samples, file_rate = sf.read(file, dtype="float32", always_2d=True)  # (T, C)
        except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError)
            raise AudioError(path, f"cannot decode ({_first_line(err)})") from None
    return prepare_waveform(samples, file_rate, sample_rate, min_samples, path)


def prepare_waveform(
    samples: np.ndarray, file_rate: int, sample_rate: int, min_samples: int = 1, path="<array>"
) -> np.ndarray:
    """Check and convert an in-memory signal (T,) or (T, C) the same way ``load_audio`` does."""
    samples = _as_2d(samples)
    if samples.shape[0] == 0:
        raise AudioError(path, "no samples")
    mono = _mono(samples, path)
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    _check_finite(mono, path)
    _check_length_and_level(len(mono), float(np.abs(mono).max()), sample_rate, min_samples, path)
    return mono


def audio_blocks(path: str | Path | Span | TarMember, sample_rate: int, min_samples: int = 1,
                 block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """``load_audio`` in blocks: mono float32 blocks at ``sample_rate`` whose concatenation
    equals ``load_audio(path, ...)`` (exactly for a file of one block, within the resampler's
    float tolerance beyond). Memory is one block, however long the file.

    Raises the same AudioErrors; silence and shortness are only known at the end, so they are
    raised after the last block: a caller keeps nothing of a clip until the iterator is done.
    """
    with _opened(path) as file:
        try:
            info = sf.info(file)
        except Exception as err:
            raise AudioError(path, f"cannot decode ({_first_line(err)})") from None
    first, stop = path.frames(info.samplerate, info.frames) if isinstance(path, Span) else (0, info.frames)
    block_frames = max(1, int(block_seconds * info.samplerate))
    if stop - first <= block_frames:  # one block: the one-shot path, bit for bit
        yield load_audio(path, sample_rate, min_samples)
        return
    yield from _stream(_read_blocks(path, block_frames, first, stop), info.samplerate, sample_rate, min_samples, path)


def audio_seconds(path: str | Path | Span | TarMember) -> float:
    """The file's (or span's) duration from its header (0.0 when unreadable: decoding will say why)."""
    try:
        with _opened(path) as file:
            info = sf.info(file)
    except Exception:
        return 0.0
    if isinstance(path, Span):
        first, stop = path.frames(info.samplerate, info.frames)
        return (stop - first) / info.samplerate
    return float(info.duration)


@contextmanager
def _opened(path: str | Path | Span | TarMember):
    """What soundfile reads for ``path``: a file's name, or a tar member's bytes as a file
    (open for the ``with`` block). AudioError when there is nothing to read."""
    file = path.path if isinstance(path, Span) else path
    member = TarMember.parse(file)
    if member is None:
        if not Path(file).is_file():  # libsndfile would only say "System error"
            raise AudioError(path, "file not found")
        yield str(file)
        return
    if not Path(member.tar).is_file():
        raise AudioError(path, "tar file not found")
    with ExitStack() as stack:
        try:
            opened = stack.enter_context(member.open())
        except OSError as err:
            raise AudioError(path, f"cannot be read ({err.strerror or err})") from None
        yield opened


def _rewound(file):
    """A file object back at its start, for a second soundfile open (a name as it is)."""
    if not isinstance(file, str):
        file.seek(0)
    return file


def _read_blocks(path, block_frames: int, first: int, stop: int) -> Iterator[np.ndarray]:
    """soundfile's blocks (T, C) of frames first..stop, with its errors turned into AudioError."""
    with _opened(path) as file:
        try:
            yield from sf.blocks(file, blocksize=block_frames, start=first, stop=stop,
                                 dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError)
            raise AudioError(path, f"cannot decode ({_first_line(err)})") from None


def _stream(blocks, file_rate: int, sample_rate: int, min_samples: int, path) -> Iterator[np.ndarray]:
    resampler = soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32", quality="HQ") \
        if file_rate != sample_rate else None
    length, peak = 0, 0.0
    for samples in blocks:
        mono = _mono(_as_2d(samples), path)
        if resampler is not None:
            mono = resampler.resample_chunk(mono)
        yield from _checked(mono, path)
        length, peak = length + len(mono), max(peak, float(np.abs(mono).max(initial=0.0)))
    if resampler is not None:  # the resampler's tail
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        yield from _checked(tail, path)
        length, peak = length + len(tail), max(peak, float(np.abs(tail).max(initial=0.0)))
    if length == 0:
        raise AudioError(path, "no samples")
    _check_length_and_level(length, peak, sample_rate, min_samples, path)


def _checked(mono: np.ndarray, path) -> Iterator[np.ndarray]:
    _check_finite(mono, path)
    if len(mono):
        yield mono


def _as_2d(samples) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    return samples[:, None] if samples.ndim == 1 else samples


def _mono(samples: np.ndarray, path) -> np.ndarray:
    """(T, C) -> (T,) channel mean; NaN or infinite input is refused."""
    if not np.isfinite(samples).all():
        raise AudioError(path, "contains NaN or infinite samples")
    channels = samples.shape[1]
    with np.errstate(over="ignore"):  # huge samples may overflow: _check_finite says so
        # Summing a column at a time is ~15x faster than samples.mean(axis=1) on a (T, C) array.
        mono = samples[:, 0].copy() if channels == 1 else samples[:, 0] + samples[:, 1]
        for channel in range(2, channels):
            mono += samples[:, channel]
        if channels > 1:
            mono *= np.float32(1 / channels)
    return mono


def _check_finite(mono: np.ndarray, path) -> None:
    # Finite but huge samples (a float file holding 3e38) overflow when channels are summed
    # or resampled; later their log-mel would too, and one such clip makes the run's
    # normalisation statistics NaN.
    if not np.isfinite(mono).all():
        raise AudioError(path, "samples overflow to infinity when mixed or resampled (absurdly large values)")


def _check_length_and_level(length: int, peak: float, sample_rate: int, min_samples: int, path) -> None:
    if length < min_samples:
        raise AudioError(path, f"too short ({length / sample_rate:.3f} s < {min_samples / sample_rate:.3f} s)")
    if peak < SILENCE_PEAK:
        raise AudioError(path, "silent")


def _first_line(err: Exception) -> str:
    """libsndfile's message without the "Error opening 'path': " prefix (the path is already named)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return re.sub(r"^Error opening .*?: ", "", text).rstrip(".")
