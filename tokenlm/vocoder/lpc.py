"""Linear prediction from the codes' decoded log-mel: the spectral envelope for free.

LPCNet's observation: a neural vocoder learns fastest when it does not have to learn the
spectral envelope. Here the envelope comes from what the codes already say -- each code's
decoded log-mel frames -- so the WaveNet only models a whitened, level-normalised excitation:

    analysis   (training data, prompts)  y[t] = (x[t] + sum_k a_k x[t-k]) / (HEADROOM * sigma)
    synthesis  (after sampling)          x[t] = HEADROOM * sigma * y[t] - sum_k a_k x[t-k]

with one (a_1..a_p, sigma) per log-mel frame (``hop`` samples); ``analyse(gain="signal")``
normalises by each frame's own excitation RMS instead, so the model learns a unit-level shape
and the codes' sigma alone sets the level at synthesis. A frame's power spectrum is
read off its log-mel (the mel power over each filter's width, interpolated between filter
centres), its autocorrelation is the inverse FFT, and Levinson-Durbin gives the predictor and
its error power sigma^2. Silence decodes to silence (sigma ~ 0) and every frame's noise comes
out under its envelope, which sampled 8-bit noise otherwise is not. The table of all codes'
frames is computed once per tokenizer (``lpc_table``) and travels with the WaveNet's weights.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter, lfiltic

from tokenlm.data.features import FeatureConfig, hz_to_mel, mel_filterbank, mel_to_hz
from tokenlm.models.wavenet.config import GAINS  # what sets the excitation's level in ``analyse``

HEADROOM = 16.0  # the excitation's scale: sigma maps to 1/16, so pulses of 16 sigma fit mu-law's [-1, 1]
# White noise added to lag 0 (-40 dB): keeps Levinson well conditioned. (A 60 Hz Gaussian lag
# window and a -30 dB floor, the speech-coding safeguards, cost 1.5-2 dB of log-mel distance on
# the demo's instruments, whose harmonic peaks they blur.)
WHITE_FLOOR = 1e-4
DITHER = 1e-7  # -140 dB: added to the excitation before the "signal" gain normalises it


def lpc_table(tokenizer, order: int, frames_per_code: int) -> np.ndarray:
    """Every code's decoded log-mel frames -> (K, frames_per_code, order + 1) predictors and sigmas."""
    import torch

    features = tokenizer.coder.features
    with torch.inference_mode():
        log_mel = tokenizer.decode(torch.arange(tokenizer.codebook_size)).cpu().numpy()  # (K * P, M) dB
    log_mel = log_mel.reshape(tokenizer.codebook_size, -1, features.n_mels)[:, :frames_per_code]
    return frame_lpc(log_mel.reshape(-1, features.n_mels), features, order).reshape(
        tokenizer.codebook_size, frames_per_code, order + 1)


def frame_lpc(log_mel_db: np.ndarray, features: FeatureConfig, order: int) -> np.ndarray:
    """Log-mel frames (F, M) in dB -> (F, order + 1): predictor a_1..a_p and sigma per frame."""
    fb = mel_filterbank(features.sample_rate, features.n_fft, features.n_mels, features.f_min, features.f_max)
    fft_hz = np.linspace(0, features.sample_rate / 2, features.n_fft // 2 + 1)
    f_max = features.f_max or features.sample_rate / 2
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array([features.f_min]))[0], hz_to_mel(np.array([f_max]))[0],
                                  features.n_mels + 2))
    centres = edges[1:-1]
    mel_power = 10.0 ** (np.asarray(log_mel_db, np.float64) / 10.0)  # (F, M)
    density = mel_power / np.maximum(fb.sum(axis=1), 1e-12)  # power per FFT bin under each filter
    log_density = np.log(np.maximum(density, 1e-20))
    power = np.exp(np.stack([np.interp(fft_hz, centres, row) for row in log_density]))  # (F, bins)
    window_energy = float(np.sum(np.hanning(features.n_fft + 1)[:-1] ** 2))  # torch's periodic Hann
    autocorr = np.fft.irfft(power, n=features.n_fft, axis=1)[:, : order + 1] / window_energy  # per sample
    autocorr[:, 0] *= 1.0 + WHITE_FLOOR
    return np.stack([_levinson(r, order) for r in autocorr]).astype(np.float32)


def _levinson(r: np.ndarray, order: int) -> np.ndarray:
    """Autocorrelation r[0..p] -> (a_1..a_p, sigma) of A(z) = 1 + sum a_k z^-k."""
    a = np.zeros(order + 1)
    a[0] = 1.0
    error = max(r[0], 1e-30)
    for i in range(1, order + 1):
        k = -(r[i] + a[1:i] @ r[i - 1:0:-1]) / error
        a[1:i + 1] = a[1:i + 1] + k * a[i - 1::-1][:i]
        error *= max(1.0 - k * k, 1e-9)
    return np.concatenate([a[1:], [np.sqrt(error)]])


def code_frames(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(K, frames_per_code, order + 1) table, codes (N,) -> (N * frames_per_code, order + 1), one row a frame."""
    return table[np.asarray(codes)].reshape(-1, table.shape[-1])


def analyse(x: np.ndarray, frames: np.ndarray, hop: int, gain: str = "codes") -> np.ndarray:
    """Float audio (T,) with T <= len(frames) * hop -> the normalised excitation y (T,), clipped to [-1, 1].

    ``gain`` says what sets each frame's level: ``"codes"``, the predictor error sigma the
    codes' log-mel implies (``synthesise`` inverts exactly); ``"signal"``, the frame's own
    excitation RMS, so every frame of y has RMS 1 / HEADROOM and a model of y learns only the
    excitation's shape, while the level at synthesis comes from the codes' sigma alone. (With
    the codes' gain, frames the codes decode too quiet give huge excitation: a model learns
    that heavy tail and samples frames ~9 dB too loud on average where the codes are right.)
    ``"capped"``: the larger of the two, so y never exceeds unit level (no heavy tail) while
    frames quieter than the codes say, digital silence among them, stay quiet."""
    if gain not in GAINS:
        raise ValueError(f"gain must be one of {', '.join(GAINS)}, got {gain!r}")
    order = frames.shape[1] - 1
    x = np.asarray(x, np.float64)
    padded = np.concatenate([np.zeros(order), x])
    lagged = np.stack([padded[order - k: order - k + len(x)] for k in range(1, order + 1)], axis=1)  # (T, p)
    a = np.repeat(frames[:, :order], hop, axis=0)[: len(x)]
    sigma = np.repeat(frames[:, order], hop)[: len(x)]
    e = x + np.sum(lagged * a, axis=1)
    if gain == "capped":
        sigma = np.maximum(sigma, _frame_rms(e, hop))
    elif gain == "signal":
        # Seeded dither far below any audible level: digital silence becomes unit-level noise
        # like every other frame, instead of runs of zeros a model learns never to leave
        # (sampled into one, it fell silent for seconds where the codes said sound).
        e = e + DITHER * np.random.default_rng(0).standard_normal(len(e))
        sigma = _frame_rms(e, hop)
    return np.clip(e / (HEADROOM * np.maximum(sigma, 1e-12)), -1.0, 1.0).astype(np.float32)


def _frame_rms(e: np.ndarray, hop: int) -> np.ndarray:
    """RMS of each ``hop``-sample frame of e (the last may be partial), repeated per sample (T,)."""
    n_frames = -(-len(e) // hop)
    padded = np.zeros(n_frames * hop)
    padded[: len(e)] = np.square(e)
    counts = np.full(n_frames, hop, dtype=np.float64)
    counts[-1] = len(e) - (n_frames - 1) * hop
    return np.repeat(np.sqrt(padded.reshape(n_frames, hop).sum(axis=1) / counts), hop)[: len(e)]


def synthesise(y: np.ndarray, frames: np.ndarray, hop: int) -> np.ndarray:
    """The inverse of ``analyse``: excitation (T,) -> audio (T,), frame by frame (the filter's
    state carried across frames as its last ``order`` outputs)."""
    y = np.asarray(y, np.float64)
    order = frames.shape[1] - 1
    out = np.zeros_like(y)
    for j, row in enumerate(frames):
        lo, hi = j * hop, min((j + 1) * hop, len(y))
        if lo >= hi:
            break
        a = np.concatenate([[1.0], row[:order]])
        zi = lfiltic([1.0], a, out[max(0, lo - order):lo][::-1]) if lo else np.zeros(order)  # from x[t-1], x[t-2], ...
        out[lo:hi], _ = lfilter([1.0], a, HEADROOM * row[order] * y[lo:hi], zi=zi)
    return out.astype(np.float32)
