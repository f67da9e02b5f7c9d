"""``tokenlm decode``: resynthesis, IN.wav -> codes (RUN's tokenizer) -> audio (RUN's WaveNet).

    tokenlm decode runs/demo data/demo/piano/piano_gm000_000.wav resynth.wav

The output has exactly codes x samples_per_code samples: the tokenizer hears the input, the
vocoder says what the codes kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from tokenlm.audio import load_audio
from tokenlm.rundir import RunDir
from tokenlm.trained import load_vocoder
from tokenlm.vocoder import publish_wav


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


@click.command("decode")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("in_path", metavar="IN.wav", type=click.Path(dir_okay=False))
@click.argument("out_path", metavar="OUT.wav", type=click.Path(dir_okay=False))
@click.option("-K", "--codebook-size", type=int, help="Codebook to encode with. [the vocoder's]")
@click.option("--temperature", type=float, default=1.0,
              help="WaveNet sampling temperature; 0 = likeliest sample each step. [1.0]")
@click.option("--seed", type=int, default=0, help="Seed of the sampling. [0]")
@click.option("--device", help="cpu, cuda or auto. [auto]")
@click.option("--no-progress", is_flag=True, help="No progress bar. [off]")
def command(run, in_path, out_path, codebook_size, temperature, seed, device, no_progress):
    """Resynthesis: IN.wav -> codes (RUN's tokenizer) -> audio (RUN's WaveNet) -> OUT.wav.

    \b
      tokenlm decode runs/demo data/demo/piano/piano_gm000_000.wav resynth.wav
    """
    summary = decode_file(run, in_path, out_path, codebook_size=codebook_size, temperature=temperature, seed=seed,
                          device=device, progress=not no_progress)
    click.echo(f"{in_path}: {summary['codes']} codes -> {out_path} ({summary['seconds']:.2f} s; synthesis "
               f"{summary['synthesis_seconds']:.1f} s, RTF {summary['rtf']:.1f})")
