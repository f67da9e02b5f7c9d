"""`tokenlm sweep`: the command line of tokenlm.pipeline.sweep (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.cli.options import config_option
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.sweep import SweepConfig, sweep_from_context


@click.command("sweep")
@click.argument("run", type=click.Path(), required=False)
@click.option("--codebook-sizes", help="Comma list of codebook sizes. [the recipe's sweep.codebook_sizes, else "
                                       "8,16,32,64,128,256,512,1024]")
@config_option("--with-lm", is_flag=True, default=None, config=SweepConfig, field="with_lm", help="Train a small LM per K (the recipe's lm section).")
@config_option("--with-probe", is_flag=True, default=None, config=SweepConfig, field="with_probe", help="Linear-probe the LM and the bag of codes per K.")
@config_option("--with-vocoder", is_flag=True, default=None, config=SweepConfig, field="with_vocoder", help="Train a vocoder per K and measure resynthesis.")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (sections: sweep, codebook, lm, probe, vocoder). [none]")
@click.option("--device", help="cpu, cuda or auto. [auto]")
def command(run, codebook_sizes, with_lm, with_probe, with_vocoder, recipe, device):
    """Information loss against codebook size, on the run's autoencoder."""
    ctx = RunContext.create(run, recipe, device=device)
    sweep_from_context(ctx, {"codebook_sizes": codebook_sizes, "with_lm": with_lm, "with_probe": with_probe,
                     "with_vocoder": with_vocoder})
