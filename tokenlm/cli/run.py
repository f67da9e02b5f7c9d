"""`tokenlm run`: the command line of tokenlm.pipeline.run (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.pipeline.registry import PIPELINE
from tokenlm.pipeline.run import run_recipe


@click.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (sets run.dir). [the recipe's run.dir]")
@click.option("--stages", help=f"Comma list of stages to run. [the recipe's, else all: {','.join(PIPELINE)}]")
@click.option("--device", help="cpu, cuda or auto. [the recipe's run.device, else auto]")
@click.option("--keep-checkpoints", is_flag=True, default=None,
              help="Keep each training's ckpt/ (resume state) after its stage finishes. [run.keep_checkpoints, "
                   "else off]")
@click.option("--log-to", help="Also log training to trackers (comma list): tensorboard, wandb, mlflow (offline, "
                               "inside each stage's folder). [run.log_to, else none]")
def command(recipe, overrides, out, stages, device, keep_checkpoints, log_to):
    """Run every stage of RECIPE in order (each cached) and write RUN/report.md.

    KEY=VALUE pairs override single recipe keys (values read as YAML); the recipe as run is
    saved as RUN/recipe.yaml:

    \b
      tokenlm run recipes/demo.yaml lm.training.steps=50 'probe.baselines=[vgg]' --out runs/short
      tokenlm run runs/short/recipe.yaml      # the same run again (every stage up to date)
    """
    report = run_recipe(recipe, stages=tuple(stages.split(",")) if stages else None, device=device,
                        overrides=overrides, out=out, keep_checkpoints=keep_checkpoints, log_to=log_to)
    click.echo(f"report: {report}")
