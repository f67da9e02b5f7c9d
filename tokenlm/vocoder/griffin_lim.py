"""Phase reconstruction: audio from codes (or log-mel) without a trained vocoder.

The tokenizer decodes the codes to log-mel frames (dB); librosa's non-negative least squares
inverts the tokenizer's own mel filterbank (what ``librosa.feature.inverse.mel_to_stft`` does
with librosa's filters), and ``librosa.griffinlim`` finds a phase for those magnitudes. It is
``tokenlm.vocoder.decode.decode_audio`` without a vocoder, and the reference row every decoder table
carries: any trained decoder should beat it on something. librosa is an optional dependency
(``pip install 'tokenlm[quality]'``): without it ``griffin_lim_missing`` says so, the decoder
table leaves the row out with that reason and ``decode_audio`` fails in one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenlm.data.features import mel_filterbank

if TYPE_CHECKING:  # annotation only: loading the tokenizer module pulls in faiss
    from tokenlm.tokenizer.tokenizer import AudioTokenizer


def griffin_lim_missing() -> str | None:
    """Why the Griffin-Lim reference cannot run here, or None when it can."""
    try:
        import librosa  # noqa: F401
    except ImportError:
        return "librosa is not installed (pip install 'tokenlm[quality]')"
    return None


def griffin_lim_from_log_mel(log_mel: np.ndarray, features, n_samples: int, n_iter: int = 32,
                             seed: int = 0) -> np.ndarray:
    """Log-mel frames (frames, M) in dB of a centred STFT -> float32 audio of ``n_samples``."""
    import librosa

    fb = mel_filterbank(features.sample_rate, features.n_fft, features.n_mels, features.f_min, features.f_max)
    frames_needed = 1 + n_samples // features.hop_length  # a centred STFT of n_samples has this many
    log_mel = np.asarray(log_mel, dtype=np.float64)
    if len(log_mel) < frames_needed:  # the codes stand for whole patches: repeat the last frame
        log_mel = np.concatenate([log_mel, np.repeat(log_mel[-1:], frames_needed - len(log_mel), axis=0)])
    mel_power = 10.0 ** (log_mel[:frames_needed].T / 10.0)  # (M, frames)
    power = librosa.util.nnls(fb.astype(np.float64), mel_power)  # (F, frames), >= 0
    audio = librosa.griffinlim(np.sqrt(power), n_iter=n_iter, hop_length=features.hop_length,
                               win_length=features.n_fft, n_fft=features.n_fft, window="hann", center=True,
                               length=n_samples, random_state=seed)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


@torch.no_grad()
def griffin_lim_from_codes(tokenizer: AudioTokenizer, codes: np.ndarray, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Codes (N,) -> float32 audio (N * samples_per_code,) through the tokenizer's decoded log-mel."""
    features = tokenizer.coder.features
    n_samples = len(codes) * tokenizer.samples_per_code
    if len(codes) == 0:
        return np.zeros(0, np.float32)
    frames = tokenizer.decode(torch.as_tensor(codes)).cpu().numpy()  # (N * patch_frames, M)
    if features.patch_step != features.patch_frames:  # overlapping patches: each code's own frames
        step = features.patch_step
        frames = frames.reshape(len(codes), features.patch_frames, -1)[:, :step].reshape(len(codes) * step, -1)
    return griffin_lim_from_log_mel(frames, features, n_samples, n_iter, seed)
