"""`tokenlm baselines`: the command line of tokenlm.pipeline.baselines (options in, library call out)."""

from __future__ import annotations

from dataclasses import replace

import click

from tokenlm.cli.options import baseline_options
from tokenlm.evaluation.probe_table import pct
from tokenlm.evaluation.rows import headline
from tokenlm.pipeline.baselines import baseline_configs, baselines, say
from tokenlm.pipeline.probe_config import BASELINES
from tokenlm.pipeline.registry import RunContext


@click.command("baselines")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("--baselines", "names",
              help="Comma list of baselines to train: vgg, simclr, timbre, temporal, timbre+temporal, "
                   "audio_transformer, resnet18, resnet50, densenet121. [the recipe's probe.baselines, "
                   "else vgg,simclr,timbre]")
@click.option("--config", "recipe", type=click.Path(dir_okay=False), help="Recipe YAML (section: probe; run.dir). [none]")
@baseline_options(seeds="the baselines", folds="the models of the official folds")
def command(run, names, recipe, epochs, simclr_epochs, weights, seed, no_folds, device, no_progress):
    """Train (or reuse) the CNN baselines of RUN: SimCLR on its pretraining corpus
    (RUN/baselines/simclr/), the supervised CNNs on each of its tasks (TASK/baselines/<name>/).

    \b
    tokenlm baselines runs/demo
    tokenlm baselines runs/demo --baselines vgg,timbre --epochs 30
    `tokenlm probe RUN --baselines ...` puts them in the probe table.
    """
    ctx = RunContext.create(run, recipe, device=device, progress=not no_progress)
    probe, config = baseline_configs(ctx, {"baselines": names, "epochs": epochs, "simclr_epochs": simclr_epochs,
                                   "imagenet_weights": weights, "seed": seed, "folds": False if no_folds else None})
    if names is None and not probe.baselines:
        probe = replace(probe, baselines=BASELINES)
    if not probe.baselines:
        say("no baselines asked for")
    for name, results in baselines(ctx.run, probe, config, tasks=ctx.tasks(), device=ctx.device,
                                   progress=ctx.progress).items():
        if name == "simclr":
            click.echo(f"SimCLR: trained in {results['train_seconds']:.0f} s -> {ctx.run.baseline(name)}")
        else:
            click.echo(f"baseline {name}: test accuracy {pct(headline(results))}")
