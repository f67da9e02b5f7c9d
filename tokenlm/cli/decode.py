"""`tokenlm decode`: the command line of tokenlm.pipeline.decode (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.cli.options import default_option
from tokenlm.pipeline.decode import decode_file


@click.command("decode")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("in_path", metavar="IN.wav", type=click.Path(dir_okay=False))
@click.argument("out_path", metavar="OUT.wav", type=click.Path(dir_okay=False))
@click.option("-K", "--codebook-size", type=int, help="Codebook to encode with. [the vocoder's]")
@default_option("--temperature", type=float, default=1.0,
              help="WaveNet sampling temperature; 0 = likeliest sample each step.")
@default_option("--seed", type=int, default=0, help="Seed of the sampling.")
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
