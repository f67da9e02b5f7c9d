"""``tokenlm run RECIPE.yaml``: every stage in order, each cached, ending with RUN/report.md.

A recipe is one YAML file with a section per stage (see recipes/demo.yaml). The stages and
their order come from the registry (tokenlm.pipeline): each one's ``run(ctx)`` skips itself
when its outputs are up to date, so a rerun after an interruption or a config change redoes
only what changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from tokenlm.errors import ConfigError
from tokenlm.pipeline import BY_NAME, PIPELINE, RunContext
from tokenlm.stages.report import write_report


def run_recipe(recipe: str | Path, *, stages: tuple[str, ...] | None = None, device: str | None = None) -> Path:
    """Run the recipe's stages in pipeline order; return the path of the run's report."""
    ctx = RunContext.create(None, recipe, device=device)
    wanted = tuple(stages or ctx.recipe.get("stages") or PIPELINE)
    unknown = [s for s in wanted if s not in PIPELINE]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)} (stages: {', '.join(PIPELINE)})")
    for name in PIPELINE:
        if name not in wanted:
            continue
        click.secho(f"== {name}", bold=True, err=True)
        start = time.time()
        BY_NAME[name].load().run(ctx)
        click.echo(f"   {name} done in {time.time() - start:.1f} s", err=True)
    return write_report(ctx.run.root)


@click.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--stages", help=f"Comma list of stages to run (default: the recipe's, else all: {','.join(PIPELINE)}).")
@click.option("--device", help="cpu, cuda or auto (default: the recipe's run.device, else auto).")
def command(recipe, stages, device):
    """Run every stage of RECIPE in order (each cached) and write RUN/report.md."""
    report = run_recipe(recipe, stages=tuple(stages.split(",")) if stages else None, device=device)
    click.echo(f"report: {report}")
