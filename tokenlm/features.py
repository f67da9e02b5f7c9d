"""Log-mel spectrograms (torch.stft + a Slaney mel filterbank), patches and normalisation.

The log-mel matches ``librosa.power_to_db(librosa.feature.melspectrogram(...), ref=1.0,
amin=log_floor, top_db=None)`` with the same parameters (tested), computed batched on CPU
or GPU. A patch is ``patch_frames`` consecutive frames spanning every mel bin: one token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


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
        spec = torch.stft(
            wav.float(),
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # (B, n_fft//2+1, frames)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.filterbank, power)  # (B, M, frames)
        log_mel = 10.0 * torch.log10(mel.clamp_min(self.config.log_floor))
        log_mel = log_mel.transpose(1, 2)  # (B, frames, M)
        return log_mel[0] if squeeze else log_mel


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

    def __init__(self, n_mels: int):
        self.count = 0
        self.total = np.zeros(n_mels)
        self.total_sq = np.zeros(n_mels)

    def update(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames, dtype=np.float64)  # (frames, M)
        self.count += frames.shape[0]
        self.total += frames.sum(axis=0)
        self.total_sq += np.square(frames).sum(axis=0)

    def result(self) -> dict:
        if self.count == 0:
            raise ValueError("no frames to compute normalisation statistics from")
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - mean**2, 0.0)
        # A bin that never varies (e.g. above a band-limited source) would divide by zero.
        std = np.maximum(np.sqrt(var), 1e-3)
        return {"mean": mean.tolist(), "std": std.tolist(), "frames": self.count}
