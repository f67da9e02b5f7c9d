"""One corpus file's audio: its kind's source, then noise, reverberation and levelling."""

from __future__ import annotations

import numpy as np

from tokenlm.demo.common import PEAK_LIMIT, SAMPLE_RATE, SILENT_PEAK, DemoError
from tokenlm.demo.music import MusicRenderer, draw_song
from tokenlm.demo.sentences import render_speech

MAX_ATTEMPTS = 5


def render_file(rng: np.random.Generator, plan, music: MusicRenderer) -> np.ndarray:
    """int16 samples of ``plan`` (a corpus FilePlan), drawn from ``rng``; a silent draw is
    re-drawn from the same Generator, so the result is still a function of the file's seed."""
    for _ in range(MAX_ATTEMPTS):
        audio = _source(rng, plan.kind, plan.seconds, music)
        if plan.reverb:
            audio = _reverberate(rng, audio)
        if plan.noise:
            audio = _add_noise(rng, audio)
        pcm = _levelled(rng, audio)
        if pcm is not None:
            return pcm
    raise DemoError(f"corpus file {plan.index} rendered silence {MAX_ATTEMPTS} times")


def _source(rng, kind: str, seconds: float, music: MusicRenderer) -> np.ndarray:
    if kind == "speech":
        return render_speech(rng, seconds)
    if kind == "drums":
        return music.song(draw_song(rng, seconds, drums_only=True), seconds)
    song = music.song(draw_song(rng, seconds), seconds)
    if kind == "music":
        return song
    speech = render_speech(rng, seconds)  # mix: speech over music at -5..+15 dB
    ratio = 10 ** (rng.uniform(-5.0, 15.0) / 20)
    return speech / (_rms(speech) + 1e-9) * ratio + song / (_rms(song) + 1e-9)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(audio**2)))


def _reverberate(rng, audio: np.ndarray) -> np.ndarray:
    """Convolve with a synthetic room response: a direct path, then exponentially decaying
    noise (RT60 0.2-1.2 s) after a short pre-delay, low-passed a little for absorption."""
    from scipy.signal import fftconvolve, lfilter

    rt60 = float(rng.uniform(0.2, 1.2))
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)  # -60 dB at rt60
    damping = float(rng.uniform(0.2, 0.7))
    tail = lfilter([1 - damping], [1, -damping], tail)
    delay = int(rng.uniform(0.003, 0.02) * SAMPLE_RATE)
    rir = np.zeros(n + delay)
    rir[0] = 1.0
    wet = 10 ** (rng.uniform(-12.0, 0.0) / 20)  # reverberant energy relative to direct
    rir[delay:] += tail / (np.linalg.norm(tail) + 1e-9) * wet
    return fftconvolve(audio, rir)[: len(audio)]


def _add_noise(rng, audio: np.ndarray) -> np.ndarray:
    """White, pink or brown noise at 0-30 dB signal-to-noise ratio."""
    from scipy.fft import next_fast_len

    colour = float(rng.choice([0.0, 1.0, 2.0]))  # spectral slope: power ~ 1 / f**colour
    n = next_fast_len(len(audio), real=True)  # a length with a large prime factor is slow
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum *= 1.0 / np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0) ** (colour / 2)
    noise = np.fft.irfft(spectrum, n=n)[: len(audio)]
    snr = 10 ** (rng.uniform(0.0, 30.0) / 20)
    return audio + noise / (_rms(noise) + 1e-12) * _rms(audio) / snr


def _levelled(rng, audio: np.ndarray) -> np.ndarray | None:
    """Scale to -30..-16 dBFS RMS with a -1 dBFS peak limit, fade the ends; None if silent."""
    if not np.all(np.isfinite(audio)) or np.abs(audio).max() < 1e-6:
        return None
    audio = audio * (10 ** (rng.uniform(-30.0, -16.0) / 20) / _rms(audio))
    peak = float(np.abs(audio).max())
    if peak > PEAK_LIMIT:
        audio *= PEAK_LIMIT / peak
    if np.abs(audio).max() < SILENT_PEAK:
        return None
    fade = int(0.02 * SAMPLE_RATE)
    audio[:fade] *= np.linspace(0.0, 1.0, fade)
    audio[-fade:] *= np.linspace(1.0, 0.0, fade)
    return np.round(audio * 32767.0).astype(np.int16)
