"""`tokenlm generate-codes`: the command line of tokenlm.pipeline.generate_codes (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.cli.options import default_option
from tokenlm.pipeline.generate_codes import generate_codes
from tokenlm.run.rundir import info_file


@click.command("generate-codes")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--prompt-codes", type=click.Path(dir_okay=False), help="Prompt codes: .npy or a text list of integers. [none]")
@click.option("--prompt-audio", type=click.Path(dir_okay=False), help="Prompt audio, encoded with RUN/tokenizer. [none]")
@default_option("--n", "n", type=int, default=200, help="Codes to generate.")
@default_option("--temperature", type=float, default=1.0, help="Sampling temperature; 0 = greedy.")
@default_option("--top-k", type=int, default=0, help="Sample among the k likeliest codes; 0 = all.")
@default_option("--seed", type=int, default=0, help="Seed of the sampling.")
@click.option("--out", type=click.Path(dir_okay=False), help="Output .npy. [RUN/generated/<prompt>-seed<S>.npy]")
@click.option("--no-prompt", is_flag=True, help="Write only the new codes, not the prompt before them. [off]")
@click.option("--device", help="cpu, cuda or auto. [auto]")
def command(run, prompt_codes, prompt_audio, n, temperature, top_k, seed, out, no_prompt, device):
    """Continue a prompt with RUN/lm (KV cache) and write the codes as .npy.

    \b
      tokenlm generate-codes runs/demo --prompt-audio clip.wav --n 200 --temperature 0.9 --top-k 50
    """
    path = generate_codes(run, prompt_codes=prompt_codes, prompt_audio=prompt_audio, n=n, temperature=temperature,
                          top_k=top_k, seed=seed, out=out, include_prompt=not no_prompt, device=device)
    click.echo(f"codes: {path}\ninfo:  {info_file(path)}")
