"""Phase reconstruction: audio from a log-mel spectrogram without a trained vocoder.

Griffin-Lim (librosa) on the power mel the log-mel was computed from: the reference decoder
of a tokenizer when no WaveNet was trained, and a floor any trained vocoder should beat.
It inverts tokenlm's own log-mel (tokenlm.features: Slaney mel filters, power spectrum,
10 log10, a centred Hann window), so decoded codes come back at the tokenizer's sample rate.
"""

from __future__ import annotations

import numpy as np

from tokenlm.errors import ConfigError
from tokenlm.features import FeatureConfig

GRIFFIN_LIM_ITERATIONS = 32


def griffin_lim(log_mel_db, features: FeatureConfig, *, n_iter: int = GRIFFIN_LIM_ITERATIONS, seed: int = 0,
                length: int | None = None) -> np.ndarray:
    """Log-mel frames (frames, n_mels) in dB -> float32 audio at ``features.sample_rate``
    (``length`` samples, default frames * hop_length). The random initial phase comes from
    ``seed``, so the result is reproducible."""
    try:
        import librosa
    except ImportError:
        raise ConfigError("Griffin-Lim decoding needs librosa: pip install 'tokenlm[phase]' "
                          "(or train a vocoder: tokenlm vocoder RUN)") from None

    log_mel = np.asarray(log_mel_db, dtype=np.float64)
    if log_mel.ndim != 2 or log_mel.shape[1] != features.n_mels:
        raise ValueError(f"log-mel must be (frames, {features.n_mels}), got {log_mel.shape}")
    length = len(log_mel) * features.hop_length if length is None else length
    if len(log_mel) == 0 or length == 0:
        return np.zeros(length, dtype=np.float32)
    power = np.power(10.0, log_mel.T / 10.0)  # (n_mels, frames)
    magnitude = librosa.feature.inverse.mel_to_stft(
        power, sr=features.sample_rate, n_fft=features.n_fft, power=2.0, fmin=features.f_min, fmax=features.f_max,
        htk=False, norm="slaney")
    audio = librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=features.hop_length, win_length=features.n_fft,
                               n_fft=features.n_fft, window="hann", center=True,
                               random_state=np.random.default_rng(seed))
    # Centred frames cover hop * (frames - 1) samples: pad (or cut) to the length asked for.
    audio = np.pad(audio, (0, max(length - len(audio), 0)))[:length]
    return audio.astype(np.float32)
