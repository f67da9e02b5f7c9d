"""How close a vocoder's resynthesis comes to its input, measured on spectra.

Resynthesis samples the WaveNet, so it is not the input even for a perfect model: the codes
fix the log-mel patch, not the waveform. The figures compare spectra for that reason:

- ``vocoder_logmel_db``: RMSE in dB between the log-mel (the run's FeatureConfig) of the
  input and of its resynthesis, and ``vocoder_lsd_db``, the log-spectral distance
  ``mean_frames sqrt(mean_freq (10 log10 P - 10 log10 P')^2)`` on STFT power spectra;
- ``codebook_logmel_db``: the same log-mel distance for the tokenizer's own reconstruction
  (``AudioTokenizer.decode(codes)``) -- what the codes lose before any vocoder;
- ``mulaw_logmel_db`` / ``mulaw_lsd_db``: the input through 8-bit mu-law alone, the floor a
  perfect 256-class vocoder would reach.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenlm.models.wavenet import mu_law_decode, mu_law_encode
from tokenlm.vocoder import Vocoder

if TYPE_CHECKING:  # annotation only: loading the tokenizer module pulls in faiss
    from tokenlm.tokenizer import AudioTokenizer


def logmel_distance_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMSE in dB between two log-mel spectrograms of the same shape (frames, M)."""
    return float((a.float() - b.float()).square().mean().sqrt())


def log_spectral_distance(ref: np.ndarray, est: np.ndarray, n_fft: int, hop: int, floor: float = 1e-10) -> float:
    """LSD in dB: mean over frames of the RMS over frequency of the difference of the log
    power spectra (Hann window, centred STFT; powers floored at ``floor``)."""
    window = torch.hann_window(n_fft)

    def log_power(x: np.ndarray) -> torch.Tensor:
        spec = torch.stft(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), n_fft, hop, window=window,
                          center=True, pad_mode="constant", return_complex=True)  # (F, frames)
        return 10 * torch.log10((spec.real.square() + spec.imag.square()).clamp_min(floor))

    diff = log_power(ref) - log_power(est)
    return float(diff.square().mean(dim=0).sqrt().mean())


@torch.no_grad()
def quality_metrics(vocoder: Vocoder, tokenizer: AudioTokenizer, clips: list[tuple[str, np.ndarray, np.ndarray]],
                    temperature: float, seed: int, progress: bool = False) -> tuple[dict, list[np.ndarray]]:
    """Resynthesise ``clips`` ((id, float audio (n * spc,), codes (n,))) in one batch and
    measure them (module docstring). Returns (metrics, resynthesised audio per clip): the
    figures averaged over the clips, ``resynthesis`` (how it was made, how fast) and
    ``per_clip``."""
    start = time.perf_counter()
    resynth = vocoder.resynthesise_batch([c for _, _, c in clips], temperature=temperature, seed=seed,
                                         batch_size=max(1, len(clips)), progress=progress)
    seconds = time.perf_counter() - start
    per_clip = [{"id": clip_id, **clip_distances(tokenizer, audio, codes, out, vocoder.config.n_classes)}
                for (clip_id, audio, codes), out in zip(clips, resynth)]
    metrics = {key: float(np.mean([row[key] for row in per_clip])) for key in per_clip[0] if key != "id"} \
        if per_clip else {}
    audio_seconds = sum(len(a) for _, a, _ in clips) / vocoder.sample_rate
    metrics["resynthesis"] = {
        "clips": len(clips), "seconds_per_clip": (audio_seconds / len(clips)) if clips else 0,
        "temperature": temperature, "seed": seed, "generation_seconds": round(seconds, 3),
        "rtf_per_clip": (seconds / audio_seconds * len(clips)) if audio_seconds else None,
        "rtf_batch": (seconds / (audio_seconds / len(clips))) if audio_seconds else None,
        "device": str(vocoder.device), "lsd_floor": tokenizer.coder.features.log_floor,
    }
    metrics["per_clip"] = per_clip
    return metrics, resynth


def clip_distances(tokenizer: AudioTokenizer, audio: np.ndarray, codes: np.ndarray, resynth: np.ndarray,
                   n_classes: int = 256) -> dict[str, float]:
    """One clip's distances (module docstring) between its input ``audio``, the vocoder's
    ``resynth`` of its ``codes``, the tokenizer's decoding of the codes and mu-law alone."""
    features = tokenizer.coder.features
    log_mel = tokenizer.coder.log_mel.cpu()
    n_frames = len(codes) * features.patch_step  # frames the codes stand for
    ref = log_mel(torch.from_numpy(audio))[:n_frames]  # (frames, M)
    mulaw = mu_law_decode(mu_law_encode(torch.from_numpy(audio), n_classes), n_classes).numpy()
    row = {
        "vocoder_logmel_db": logmel_distance_db(ref, log_mel(torch.from_numpy(resynth))[:n_frames]),
        "vocoder_lsd_db": log_spectral_distance(audio, resynth, features.n_fft, features.hop_length,
                                                features.log_floor),
        "mulaw_logmel_db": logmel_distance_db(ref, log_mel(torch.from_numpy(mulaw))[:n_frames]),
        "mulaw_lsd_db": log_spectral_distance(audio, mulaw, features.n_fft, features.hop_length, features.log_floor),
    }
    if features.patch_step == features.patch_frames:  # codes map onto whole frames only without overlap
        decoded = tokenizer.decode(torch.from_numpy(codes)).cpu()  # (n * patch_frames, M)
        row["codebook_logmel_db"] = logmel_distance_db(ref, decoded[:n_frames])
    return row
