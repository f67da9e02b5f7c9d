"""Distances between a reference signal and a decoded one, as audio people measure them.

- ``logmel_distance_db``: RMSE in dB between two log-mel spectrograms;
- ``log_spectral_distance``: LSD in dB on STFT power spectra;
- ``mr_stft_distance``: the multi-resolution STFT distance of the neural vocoder literature
  (Parallel WaveGAN): at each of several (n_fft, hop) resolutions, spectral convergence
  ``|| |S| - |S'| ||_F / || |S| ||_F`` plus the mean absolute difference of log magnitudes,
  averaged over resolutions. 0 for identical signals; insensitive to phase;
- ``stoi``: short-time objective intelligibility (0..1, for speech) from the optional
  ``pystoi`` package (``pip install tokenlm[quality]``); None, with ``stoi_missing`` saying
  why, when it is not installed.
"""

from __future__ import annotations

import numpy as np
import torch

# (n_fft, hop) at 16 kHz: 16, 32 and 64 ms windows, a quarter of a window apart.
MR_STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))


def logmel_distance_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMSE in dB between two log-mel spectrograms of the same shape (frames, M)."""
    return float((a.float() - b.float()).square().mean().sqrt())


def _stft_power(x: np.ndarray, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT|^2 (F, frames): Hann window, centred with zero padding."""
    spec = torch.stft(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), n_fft, hop,
                      window=torch.hann_window(n_fft), center=True, pad_mode="constant", return_complex=True)
    return spec.real.square() + spec.imag.square()


def log_spectral_distance(ref: np.ndarray, est: np.ndarray, n_fft: int, hop: int, floor: float = 1e-10) -> float:
    """LSD in dB: mean over frames of the RMS over frequency of the difference of the log
    power spectra (Hann window, centred STFT; powers floored at ``floor``)."""
    diff = 10 * (torch.log10(_stft_power(ref, n_fft, hop).clamp_min(floor))
                 - torch.log10(_stft_power(est, n_fft, hop).clamp_min(floor)))
    return float(diff.square().mean(dim=0).sqrt().mean())


def mr_stft_distance(ref: np.ndarray, est: np.ndarray, resolutions=MR_STFT_RESOLUTIONS,
                     floor: float = 1e-7) -> float:
    """Multi-resolution STFT distance (module docstring) of ``est`` to ``ref`` (same length)."""
    if len(ref) != len(est):
        raise ValueError(f"signals of different lengths: {len(ref)} and {len(est)}")
    total = 0.0
    for n_fft, hop in resolutions:
        mag_ref = _stft_power(ref, n_fft, hop).sqrt()
        mag_est = _stft_power(est, n_fft, hop).sqrt()
        convergence = (mag_ref - mag_est).norm() / mag_ref.norm().clamp_min(floor)
        log_mag = (mag_ref.clamp_min(floor).log() - mag_est.clamp_min(floor).log()).abs().mean()
        total += float(convergence + log_mag)
    return total / len(resolutions)


def stoi_missing() -> str | None:
    """Why STOI cannot be measured here, or None when it can."""
    try:
        import pystoi  # noqa: F401
    except ImportError:
        return "pystoi is not installed (pip install 'tokenlm[quality]')"
    return None


def stoi(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float | None:
    """STOI of ``est`` against ``ref`` (pystoi, classic non-extended); None without pystoi."""
    if stoi_missing():
        return None
    from pystoi import stoi as pystoi_stoi

    return float(pystoi_stoi(np.asarray(ref, np.float64), np.asarray(est, np.float64), sample_rate, extended=False))
