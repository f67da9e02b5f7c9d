"""Log-mel spectrograms (torch.stft + a Slaney mel filterbank), patches and normalisation.

The log-mel matches ``librosa.power_to_db(librosa.feature.melspectrogram(...), ref=1.0,
amin=log_floor, top_db=None)`` with the same parameters (tested), computed batched on CPU
or GPU. A patch is ``patch_frames`` consecutive frames spanning every mel bin: one token.
``file_log_mel`` computes a file's log-mel block by block (``audio_blocks`` + ``LogMelStream``),
so memory holds one block of audio and the frames, however long the recording.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenlm.core.errors import AudioError
from tokenlm.data.audio import BLOCK_SECONDS, audio_blocks, audio_seconds


@dataclass(frozen=True)
class FeatureConfig:
    """How audio becomes log-mel frames and patches. Travels with every artifact built on it."""

    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms window at 16 kHz
    hop_length: int = 160  # 10 ms
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    log_floor: float = 1e-10  # power floor before 10*log10 (librosa's amin)
    patch_frames: int = 5
    patch_hop: int | None = None  # frames between patch starts; None: non-overlapping

    def __post_init__(self):
        if self.f_max is not None and not self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")
        if self.patch_frames < 1 or self.hop_length < 1 or self.n_mels < 1:
            raise ValueError("patch_frames, hop_length and n_mels must be positive")

    @property
    def frame_rate(self) -> float:
        """Log-mel frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def patch_step(self) -> int:
        return self.patch_hop or self.patch_frames

    @property
    def code_rate(self) -> float:
        """Patches (= codes) per second."""
        return self.frame_rate / self.patch_step

    @property
    def samples_per_code(self) -> int:
        """Audio samples one code stands for (the vocoder's upsampling factor)."""
        return self.hop_length * self.patch_step

    @property
    def patch_dim(self) -> int:
        return self.patch_frames * self.n_mels

    def num_frames(self, num_samples: int) -> int:
        """Frames of a centred STFT over ``num_samples`` samples."""
        return 1 + num_samples // self.hop_length


def hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_region = freq >= min_log_hz
    mels[log_region] = min_log_mel + np.log(freq[log_region] / min_log_hz) / logstep
    return mels


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    log_region = mels >= min_log_mel
    freqs[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freqs


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float | None) -> np.ndarray:
    """Triangular Slaney-normalised mel filters, (n_mels, n_fft // 2 + 1) float32."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = mel_to_hz(np.linspace(hz_to_mel(np.array([f_min]))[0], hz_to_mel(np.array([f_max]))[0], n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]  # equal area per filter
    return weights.astype(np.float32)


class LogMel(torch.nn.Module):
    """Waveforms (B, T) or (T,) -> log-mel in dB, (B, frames, n_mels) or (frames, n_mels)."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        fb = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max)
        self.register_buffer("filterbank", torch.from_numpy(fb), persistent=False)  # (M, n_fft//2+1)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        squeeze = wav.dim() == 1
        wav = wav.reshape(1, -1) if squeeze else wav
        log_mel = self.frames(wav, center=True)
        return log_mel[0] if squeeze else log_mel

    def frames(self, wav: torch.Tensor, center: bool) -> torch.Tensor:
        """(B, T) -> (B, frames, M). ``center`` pads n_fft // 2 zeros on each side (librosa's
        default); without it frame f starts at sample f * hop and the caller pads, which is how
        ``LogMelStream`` continues a signal across blocks."""
        spec = torch.stft(
            wav.float(),
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            window=self.window,
            center=center,
            pad_mode="constant",
            return_complex=True,
        )  # (B, n_fft//2+1, frames)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.filterbank, power)  # (B, M, frames)
        log_mel = 10.0 * torch.log10(mel.clamp_min(self.config.log_floor))
        return log_mel.transpose(1, 2)  # (B, frames, M)


class LogMelStream:
    """``LogMel`` of a signal that arrives in blocks: the same frames as one call on the whole
    signal (within float tolerance), with at most one block plus one window in memory.

    A centred STFT pads n_fft // 2 zeros on each side; the stream pads the start, carries the
    samples of frames not yet complete into the next block, and pads the end in ``finish``.
    """

    def __init__(self, log_mel: LogMel):
        self.log_mel = log_mel
        self.config = log_mel.config
        self.pending = np.zeros(self.config.n_fft // 2, dtype=np.float32)

    def push(self, block: np.ndarray) -> np.ndarray:
        """The frames (n, M) that ``block`` completes."""
        self.pending = np.concatenate([self.pending, np.asarray(block, dtype=np.float32)])
        return self._complete_frames()

    def finish(self) -> np.ndarray:
        """The last frames, over the end padding."""
        self.pending = np.concatenate([self.pending, np.zeros(self.config.n_fft // 2, dtype=np.float32)])
        return self._complete_frames()

    def _complete_frames(self) -> np.ndarray:
        n_fft, hop = self.config.n_fft, self.config.hop_length
        n = 0 if len(self.pending) < n_fft else 1 + (len(self.pending) - n_fft) // hop
        if n == 0:
            return np.zeros((0, self.config.n_mels), dtype=np.float32)
        with torch.inference_mode():
            wav = torch.from_numpy(self.pending[: (n - 1) * hop + n_fft]).reshape(1, -1)
            frames = self.log_mel.frames(wav, center=False)[0].numpy()
        self.pending = self.pending[n * hop:]
        return frames


def file_log_mel(path: str | Path, log_mel: LogMel, min_samples: int = 1,
                 block_seconds: float = BLOCK_SECONDS) -> tuple[np.ndarray, int]:
    """(log-mel frames (frames, M) float32, number of samples) of an audio file at
    ``log_mel``'s sample rate, decoded block by block: memory is one block of audio plus the
    frames (1/40 of 48 kHz stereo float32 at the default config), whatever the file's length.

    Raises AudioError like ``load_audio``, and for a log-mel that is not finite.
    """
    blocks = log_mel_blocks(path, log_mel, min_samples, block_seconds)
    first, samples = next(blocks)
    rest = next(blocks, None)
    if rest is None:  # one block: no copy
        return first, samples
    # Into one array sized from the header: joining per-block pieces would hold the frames twice.
    config = log_mel.config
    out = _Growing(config.num_frames(round(audio_seconds(path) * config.sample_rate)), config.n_mels)
    num_samples = 0
    for frames, samples in _chain([(first, samples), rest], blocks):
        out.append(frames)
        num_samples += samples
    return out.array(), num_samples


def log_mel_blocks(path: str | Path, log_mel: LogMel, min_samples: int = 1,
                   block_seconds: float = BLOCK_SECONDS) -> Iterator[tuple[np.ndarray, int]]:
    """``file_log_mel`` block by block: (frames, samples decoded) pairs whose frames, joined,
    are ``file_log_mel``'s. Memory is one block and its frames, however long the file.

    Raises AudioError like ``file_log_mel``, possibly after some blocks (a caller that writes
    them as they come undoes them then).
    """
    blocks = audio_blocks(path, log_mel.config.sample_rate, min_samples, block_seconds)
    first = next(blocks)
    rest = next(blocks, None)
    if rest is None:  # one block: the one-shot path, bit for bit
        with torch.inference_mode():
            frames = log_mel(torch.from_numpy(first)).numpy()
        yield _finite(frames, path), len(first)
        return
    stream = LogMelStream(log_mel)
    for block in _chain([first, rest], blocks):
        yield _finite(stream.push(block), path), len(block)
    yield _finite(stream.finish(), path), 0


class _Growing:
    """A (rows, width) float32 array filled block by block, grown if the estimate was short."""

    def __init__(self, rows: int, width: int):
        self.data = np.empty((max(rows, 1), width), dtype=np.float32)
        self.filled = 0

    def append(self, rows: np.ndarray) -> None:
        end = self.filled + len(rows)
        if end > len(self.data):
            grown = np.empty((max(end, len(self.data) * 5 // 4), self.data.shape[1]), dtype=np.float32)
            grown[: self.filled] = self.data[: self.filled]
            self.data = grown
        self.data[self.filled:end] = rows
        self.filled = end

    def array(self) -> np.ndarray:
        return self.data[: self.filled]


def _chain(head: list, tail: Iterable) -> Iterator:
    yield from head
    yield from tail


def _finite(frames: np.ndarray, path) -> np.ndarray:
    # Samples near float32's range pass every check on the waveform, but their power overflows.
    if not np.isfinite(frames).all():
        raise AudioError(path, "log-mel is not finite (samples too large to square)")
    return frames


def patchify(frames: torch.Tensor, patch_frames: int, patch_hop: int | None = None) -> tuple[torch.Tensor, bool]:
    """Cut (frames, M) into flattened patches (N, patch_frames * M).

    A clip shorter than one patch is padded with its own quietest value per bin and
    flagged (second return value True), so it still yields one token.
    """
    hop = patch_hop or patch_frames
    n_frames, n_mels = frames.shape
    padded = n_frames < patch_frames
    if padded:
        fill = frames.min(dim=0, keepdim=True).values.expand(patch_frames - n_frames, n_mels)
        frames = torch.cat([frames, fill], dim=0)
        n_frames = patch_frames
    n_patches = 1 + (n_frames - patch_frames) // hop
    patches = frames.unfold(0, patch_frames, hop)  # (N, M, P)
    return patches[:n_patches].transpose(1, 2).reshape(n_patches, patch_frames * n_mels), padded


def unpatchify(patches: torch.Tensor, n_mels: int) -> torch.Tensor:
    """Inverse of non-overlapping ``patchify``: (N, P * M) -> (N * P, M)."""
    return patches.reshape(patches.shape[0], -1, n_mels).reshape(-1, n_mels)


class RunningStats:
    """Per-mel-bin mean and std accumulated in float64 over streamed frames (train split only)."""

    SLICE = 65536  # frames summed at a time

    def __init__(self, n_mels: int):
        self.count = 0
        self.total = np.zeros(n_mels)
        self.total_sq = np.zeros(n_mels)

    def update(self, frames: np.ndarray) -> None:
        # A slice at a time: an hour-long clip in float64 (and its square) would take 370 MB.
        for start in range(0, len(frames), self.SLICE):
            part = np.asarray(frames[start:start + self.SLICE], dtype=np.float64)  # (frames, M)
            self.count += part.shape[0]
            self.total += part.sum(axis=0)
            self.total_sq += np.square(part).sum(axis=0)

    def clip(self) -> "ClipStats":
        """An updater for one clip arriving in blocks, with the sums of ``update(whole clip)``."""
        return ClipStats(self)

    def result(self) -> dict:
        if self.count == 0:
            raise ValueError("no frames to compute normalisation statistics from")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        # A bin that never varies (e.g. above a band-limited source) would divide by zero.
        std = np.maximum(np.sqrt(var), 1e-3)
        return {"mean": mean.tolist(), "std": std.tolist(), "frames": self.count}


class ClipStats:
    """``RunningStats.update`` of one clip fed block by block, bit for bit: the same SLICE-frame
    slices from the clip's start, each summed row after row as numpy sums a slice's rows, so
    that no more than a block is held. Nothing reaches ``stats`` before ``finish()``: a clip
    that fails half-way is simply dropped."""

    def __init__(self, stats: RunningStats):
        self.stats = stats
        self.slices: list[tuple] = []  # (count, sum, sum of squares) of each slice, in order

    def update(self, frames: np.ndarray) -> None:
        start = 0
        while start < len(frames):
            count, total, total_sq = self.slices[-1] if self.slices else (self.stats.SLICE, None, None)
            if count == self.stats.SLICE:  # a new slice
                count, total, total_sq = 0, None, None
                self.slices.append(None)
            take = min(self.stats.SLICE - count, len(frames) - start)
            part = np.asarray(frames[start:start + take], dtype=np.float64)
            if count:  # continue the slice's running sums
                total = np.concatenate([total[None], part]).sum(axis=0)
                total_sq = np.concatenate([total_sq[None], np.square(part)]).sum(axis=0)
            else:
                total, total_sq = part.sum(axis=0), np.square(part).sum(axis=0)
            self.slices[-1] = (count + take, total, total_sq)
            start += take

    def finish(self) -> None:
        for count, total, total_sq in self.slices:
            self.stats.count += count
            self.stats.total += total
            self.stats.total_sq += total_sq
        self.slices = []
