"""`tokenlm vocoder`: the command line of tokenlm.pipeline.vocoder (options in, library call out)."""

from __future__ import annotations

import os

import click

from tokenlm.cli.options import config_option, training_options
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.vocoder import DEFAULT, VOCODER_TRAINING_DEFAULTS, VocoderConfig, train_vocoder
from tokenlm.run.rundir import (
    METRICS,
    SAMPLES,
)


@click.command("vocoder")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("-K", "--codebook-size", type=int, help="Which codes to condition on. [the run's current K]")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (section vocoder, with vocoder.training). [none]")
@training_options(VOCODER_TRAINING_DEFAULTS, items="Crops", seeds="crops and sampling")
@config_option("--layers-per-cycle", type=int, config=DEFAULT.model, field="layers_per_cycle", help="Dilated layers per cycle (dilations 1..2^(n-1)).")
@config_option("--cycles", type=int, config=DEFAULT.model, field="cycles", help="Cycles of dilations.")
@config_option("--residual-channels", type=int, config=DEFAULT.model, field="residual_channels", help="Residual width.")
@config_option("--gate-channels", type=int, config=DEFAULT.model, field="gate_channels", help="Dilated conv output (tanh half + sigmoid half).")
@config_option("--skip-channels", type=int, config=DEFAULT.model, field="skip_channels", help="Skip width.")
@config_option("--cond-channels", type=int, config=DEFAULT.model, field="cond_channels", help="Code embedding width.")
@config_option("--crop-codes", type=int, config=DEFAULT, field="crop_codes", help="Training window in codes.")
@config_option("--metrics-clips", type=int, config=DEFAULT, field="metrics_clips", help="Val clips resynthesised for metrics.json.")
@config_option("--metrics-seconds", type=float, config=DEFAULT, field="metrics_seconds", help="Seconds of each, from its start.")
def command(run, codebook_size, recipe, device, no_progress, **options):
    """Train the WaveNet decoder on the train split's (audio, codes) and save it to RUN/vocoder.

    Rerunning after an interruption (Ctrl-C, kill -9) resumes from the last checkpoint.

    \b
      tokenlm vocoder runs/demo --config recipes/demo.yaml
      tokenlm vocoder runs/demo -K 64 --steps 2000
      torchrun --nproc_per_node=2 -m tokenlm vocoder runs/demo
    """
    ctx = RunContext.create(run, recipe, device=device, progress=not no_progress)
    cfg = VocoderConfig.from_section(ctx.section("vocoder"), options)
    out = train_vocoder(ctx.run, cfg, codebook_size=codebook_size, device=ctx.device, progress=ctx.progress)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process speaks
        click.echo(f"vocoder: {out}\nmetrics: {out / METRICS}\nsamples: {out / SAMPLES}")
