"""`tokenlm probe`: the command line of tokenlm.pipeline.probe (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.cli.options import baseline_options
from tokenlm.data.splits import SplitConfig
from tokenlm.evaluation.summary import summary_path
from tokenlm.pipeline.prepare import data_flags
from tokenlm.pipeline.probe import probe_tasks
from tokenlm.pipeline.probe_config import SECTION, configs
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.tasks import task_at
from tokenlm.run.rundir import REPORT


@click.command("probe")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("--task", "task_paths", multiple=True, type=click.Path(),
              help="A labelled dataset to probe the run's models on (repeatable; name: its folder's). "
                   "[the recipe's tasks, else the run's tasks, else its own data]")
@click.option("--baselines", help="Comma list of baselines to train and compare (or none): vgg, simclr, timbre, "
                                 "temporal, timbre+temporal, audio_transformer, resnet18, resnet50, densenet121. "
                                 "[the recipe's probe.baselines, else none]")
@click.option("--layers", help="LM layers to probe: all or a comma list, 0 = embedding output. [all]")
@click.option("-K", "--codebook-size", type=int,
              help="Codebook size whose codes are probed. [the run's current]")
@click.option("--config", "recipe", type=click.Path(dir_okay=False),
              help="Recipe YAML (sections: probe, tasks, split; run.dir). [none]")
@baseline_options(seeds="the probes and baselines", folds="the cross-validation over official folds")
def command(run, task_paths, baselines, layers, codebook_size, recipe, epochs, simclr_epochs, weights, seed, no_folds,
            device, no_progress):
    """Linear probes of every representation of RUN on each task, beside the CNN baselines.

    \b
    tokenlm probe runs/demo
    tokenlm probe runs/demo --task data/esc50 --task data/speech
    tokenlm probe runs/demo --baselines vgg,simclr,timbre --layers 0,4,8
    Writes RUN/probe/<task>/{results.json,report.md} and RUN/probe/summary.{json,md}; a new
    task's features and codes go to RUN/tasks/<task>/, its supervised baselines below it.
    """
    ctx = RunContext.create(run, recipe, device=device, progress=not no_progress)
    overrides = {"baselines": baselines, "layers": layers, "codebook_size": codebook_size, "epochs": epochs,
                 "simclr_epochs": simclr_epochs, "imagenet_weights": weights, "seed": seed,
                 "folds": False if no_folds else None}
    probe_config, baseline_config = configs(ctx.section(SECTION), overrides)
    tasks = [task_at(ctx.run, path) for path in task_paths] or ctx.tasks()
    outs = probe_tasks(ctx.run, tasks, probe_config, baseline_config,
                       split=ctx.config(SplitConfig, "split"), device=ctx.device, progress=ctx.progress,
                       **data_flags(ctx.section("data")))
    click.echo((outs[0] / REPORT).read_text() if len(outs) == 1 else summary_path(ctx.run.probe).read_text())
