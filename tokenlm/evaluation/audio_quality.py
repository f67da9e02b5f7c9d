"""How close decoders of the codes come to the input, measured on spectra, side by side.

Resynthesis samples the WaveNet, so it is not the input even for a perfect model: the codes
fix the log-mel patch, not the waveform. The figures compare spectra for that reason
(tokenlm.evaluation.spectral), for four ways back to audio:

- ``codebook_*``: the tokenizer's own reconstruction (``AudioTokenizer.decode(codes)``), a
  log-mel only -- what the codes lose before any decoder (log-mel distance only);
- ``mulaw_*``: the input through 8-bit mu-law alone, the floor a perfect 256-class vocoder reaches;
- ``griffinlim_*``: the reference with no training, codes -> decoded log-mel -> Griffin-Lim
  (tokenlm.vocoder.griffin_lim; left out, with the reason, without librosa);
- ``vocoder_*``: the trained WaveNet from the codes.

Each has ``_logmel_db`` (RMSE in dB of the log-mel of the run's FeatureConfig), ``_lsd_db``
(log-spectral distance on the features' STFT), ``_mrstft`` (multi-resolution STFT distance)
and, with pystoi installed, ``_stoi`` (intelligibility; meaningful for speech).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from tokenlm.evaluation.spectral import (  # noqa: F401 (re-exported: the distances' old home)
    log_spectral_distance,
    logmel_distance_db,
    mr_stft_distance,
    stoi,
    stoi_missing,
)
from tokenlm.models.wavenet import mu_law_decode, mu_law_encode
from tokenlm.vocoder.griffin_lim import griffin_lim_from_codes, griffin_lim_missing
from tokenlm.vocoder.vocoder import Vocoder

if TYPE_CHECKING:  # annotation only: loading the tokenizer module pulls in faiss
    from tokenlm.tokenizer.tokenizer import AudioTokenizer

# (prefix, what it is), in the order tables show them.
DECODERS = (("codebook", "codes' log-mel (tokenizer decode, no audio)"), ("mulaw", "8-bit mu-law of the input"),
            ("griffinlim", "Griffin-Lim from the codes (no training)"), ("vocoder", "WaveNet from the codes"))
# (suffix, column heading, lower is better)
MEASURES = (("logmel_db", "log-mel dB", True), ("lsd_db", "LSD dB", True), ("mrstft", "MR-STFT", True),
            ("stoi", "STOI", False))


@torch.no_grad()
def quality_metrics(vocoder: Vocoder, tokenizer: AudioTokenizer, clips: list[tuple[str, np.ndarray, np.ndarray]],
                    temperature: float, seed: int, progress: bool = False
                    ) -> tuple[dict, list[np.ndarray], list[np.ndarray | None]]:
    """Resynthesise ``clips`` ((id, float audio (n * spc,), codes (n,))) in one batch and
    measure them (module docstring). Returns (metrics, the WaveNet's audio per clip, the
    Griffin-Lim reference's per clip (None each without librosa)): the
    figures averaged over the clips, ``resynthesis`` (how it was made, how fast), ``skipped``
    (measures left out and why) and ``per_clip``."""
    if clips and len(clips[0][2]):  # warm-up, untimed: the fused step compiles on its first call
        vocoder.resynthesise(clips[0][2][:1], temperature=temperature, seed=seed)
    start = time.perf_counter()
    resynth = vocoder.resynthesise_batch([c for _, _, c in clips], temperature=temperature, seed=seed,
                                         batch_size=max(1, len(clips)), progress=progress)
    seconds = time.perf_counter() - start
    references = reference_decodes(tokenizer, [c for _, _, c in clips], seed)
    per_clip = [{"id": clip_id, **clip_distances(tokenizer, audio, codes, out, vocoder.config.n_classes, reference)}
                for (clip_id, audio, codes), out, reference in zip(clips, resynth, references)]
    metrics = {key: float(np.mean([row[key] for row in per_clip])) for key in per_clip[0] if key != "id"} \
        if per_clip else {}
    audio_seconds = sum(len(a) for _, a, _ in clips) / vocoder.sample_rate
    metrics["resynthesis"] = {
        "clips": len(clips), "seconds_per_clip": (audio_seconds / len(clips)) if clips else 0,
        "temperature": temperature, "seed": seed, "generation_seconds": round(seconds, 3),
        "rtf_per_clip": (seconds / audio_seconds * len(clips)) if audio_seconds else None,
        "rtf_batch": (seconds / (audio_seconds / len(clips))) if audio_seconds else None,
        "device": str(vocoder.device), "lsd_floor": tokenizer.coder.features.log_floor,
        "batch_size": max(1, len(clips)), "timed_after_warmup": True,
    }
    metrics["skipped"] = skipped_measures()
    metrics["per_clip"] = per_clip
    return metrics, resynth, references


def skipped_measures() -> dict[str, str]:
    """Measures this installation cannot make -> why."""
    reasons = {"griffinlim": griffin_lim_missing(), "stoi": stoi_missing()}
    return {name: why for name, why in reasons.items() if why}


def reference_decodes(tokenizer: AudioTokenizer, clips: list[np.ndarray], seed: int = 0) -> list[np.ndarray | None]:
    """The Griffin-Lim reference of each clip's codes (None each without librosa)."""
    if griffin_lim_missing():
        return [None] * len(clips)
    return [griffin_lim_from_codes(tokenizer, codes, seed=seed) for codes in clips]


def clip_distances(tokenizer: AudioTokenizer, audio: np.ndarray, codes: np.ndarray, resynth: np.ndarray,
                   n_classes: int = 256, griffin_lim: np.ndarray | None = None) -> dict[str, float]:
    """One clip's distances (module docstring) between its input ``audio`` and each decoder:
    the vocoder's ``resynth``, the tokenizer's decoding of the codes, mu-law alone and, when
    given, the ``griffin_lim`` reference."""
    features = tokenizer.coder.features
    log_mel = tokenizer.coder.log_mel.cpu()
    n_frames = len(codes) * features.patch_step  # frames the codes stand for
    ref = log_mel(torch.from_numpy(audio))[:n_frames]  # (frames, M)
    mulaw = mu_law_decode(mu_law_encode(torch.from_numpy(audio), n_classes), n_classes).numpy()
    decoded = {"vocoder": resynth, "mulaw": mulaw}
    if griffin_lim is not None:
        decoded["griffinlim"] = griffin_lim
    row = {}
    for name, out in decoded.items():
        row[f"{name}_logmel_db"] = logmel_distance_db(ref, log_mel(torch.from_numpy(out))[:n_frames])
        row[f"{name}_lsd_db"] = log_spectral_distance(audio, out, features.n_fft, features.hop_length,
                                                      features.log_floor)
        row[f"{name}_mrstft"] = mr_stft_distance(audio, out)
        score = stoi(audio, out, features.sample_rate)
        if score is not None:
            row[f"{name}_stoi"] = score
    if features.patch_step == features.patch_frames:  # codes map onto whole frames only without overlap
        frames = tokenizer.decode(torch.from_numpy(codes)).cpu()  # (n * patch_frames, M)
        row["codebook_logmel_db"] = logmel_distance_db(ref, frames[:n_frames])
    return row


def decoder_table(metrics: dict) -> list[str]:
    """Markdown rows (decoder x measure) of a metrics.json's averages; measures nobody has
    are left out, a decoder without a figure shows n/a."""
    measures = [(suffix, title, low) for suffix, title, low in MEASURES
                if any(isinstance(metrics.get(f"{name}_{suffix}"), (int, float)) for name, _ in DECODERS)]
    lines = ["| decoder | " + " | ".join(f"{title} ({'lower' if low else 'higher'} is better)"
                                         for _, title, low in measures) + " |",
             "|---|" + "---:|" * len(measures)]
    for name, label in DECODERS:
        cells = [metrics.get(f"{name}_{suffix}") for suffix, _, _ in measures]
        if any(isinstance(c, (int, float)) for c in cells):
            lines.append(f"| {label} | " + " | ".join(f"{c:.3f}" if isinstance(c, (int, float)) else "n/a"
                                                      for c in cells) + " |")
    return lines
