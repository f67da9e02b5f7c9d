"""`tokenlm generate`: the command line of tokenlm.pipeline.generate (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.cli.options import default_option
from tokenlm.pipeline.generate import Continuation, generate_file
from tokenlm.run.rundir import info_file


@click.command("generate")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("out_path", metavar="OUT.wav", type=click.Path(dir_okay=False))
@click.option("--prompt", type=click.Path(dir_okay=False), help="Audio to continue. [none: start from nothing]")
@default_option("--seconds", type=float, default=2.0, help="Seconds to add after the prompt.")
@default_option("--temperature", type=float, default=1.0, help="LM sampling temperature; 0 = greedy.")
@default_option("--top-k", type=int, default=0, help="LM samples among the k likeliest codes; 0 = all.")
@default_option("--seed", type=int, default=0, help="Seed of the LM and WaveNet sampling.")
@default_option("--vocoder-temperature", type=float, default=1.0, help="WaveNet sampling temperature.")
@default_option("--prime/--no-prime", default=True,
              help="Feed the prompt's own audio to the WaveNet (else resynthesise it from its codes).")
@click.option("--device", help="cpu, cuda or auto. [auto]")
@click.option("--no-progress", is_flag=True, help="No progress bar. [off]")
def command(run, out_path, prompt, device, no_progress, **how):
    """Continue audio: encode --prompt, continue its codes with RUN/lm, decode with RUN/vocoder.

    \b
      tokenlm generate runs/demo --prompt data/demo/piano/piano_gm000_000.wav --seconds 3 out.wav
    """
    summary = generate_file(run, out_path, Continuation(**how), prompt=prompt, device=device,
                            progress=not no_progress)
    click.echo(f"{summary['prompt_codes']} prompt + {summary['generated_codes']} new codes -> {out_path} "
               f"({summary['seconds']:.2f} s; synthesis {summary['synthesis_seconds']:.1f} s)\n"
               f"info: {info_file(out_path)}")
