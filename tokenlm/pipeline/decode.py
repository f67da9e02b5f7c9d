"""``tokenlm decode``: resynthesis, IN.wav -> codes (RUN's tokenizer) -> audio (RUN's WaveNet).

    tokenlm decode runs/demo data/demo/piano/piano_gm000_000.wav resynth.wav

The output has exactly codes x samples_per_code samples: the tokenizer hears the input, the
vocoder says what the codes kept.
"""

from __future__ import annotations

import time
from pathlib import Path

from tokenlm.data.audio import load_audio
from tokenlm.pipeline.loaders import load_vocoder
from tokenlm.run.rundir import RunDir
from tokenlm.vocoder.vocoder import publish_wav


def decode_file(run: str | RunDir, in_path: str | Path, out_path: str | Path, *, codebook_size: int | None = None,
                temperature: float = 1.0, seed: int = 0, device=None, progress: bool = True) -> dict:
    """Audio file -> codes (the run's tokenizer) -> audio (the run's vocoder) -> ``out_path``.
    Returns a summary: codes, samples, seconds, synthesis time and real-time factor."""
    vocoder, tokenizer = load_vocoder(run, codebook_size, device)
    wav = load_audio(in_path, tokenizer.sample_rate, min_samples=tokenizer.coder.features.n_fft)
    codes = tokenizer.encode(wav, tokenizer.sample_rate).numpy()
    start = time.perf_counter()
    audio = vocoder.resynthesise(codes, temperature=temperature, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    publish_wav(out_path, audio, vocoder.sample_rate)
    duration = len(audio) / vocoder.sample_rate
    return {"codes": int(len(codes)), "samples": int(len(audio)), "seconds": duration,
            "synthesis_seconds": seconds, "rtf": seconds / duration if duration else None, "out": str(out_path)}
