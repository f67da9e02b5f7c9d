"""`tokenlm prepare`: the command line of tokenlm.pipeline.prepare (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.cli.options import data_options, engine_options, run_argument
from tokenlm.core.errors import TokenlmError
from tokenlm.engine import engine_config
from tokenlm.pipeline.prepare import prepare_from_context
from tokenlm.pipeline.registry import RunContext


@click.command("prepare")
@run_argument
@click.option("--data", "data", type=click.Path(), help="Dataset folder or manifest file. [the recipe's data.path]")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (sections: data, features, split). [none]")
@click.option("--strict", is_flag=True, default=None, help="Fail if any clip is skipped. [off]")
@data_options()
@engine_options()
def command(data, run, recipe, strict, hash_content, allow_outside, engine, ray_address, ray_workers,
            ray_gpus_per_worker):
    """Scan a dataset, split it and compute log-mel features into RUN/features."""
    if not recipe and not (data and run):
        raise TokenlmError("need RUN and --data (or a recipe with data.path and run.dir)")
    ctx = RunContext.create(run, recipe)
    prepare_from_context(ctx, data=data, strict=strict, hash_content=hash_content, allow_outside=allow_outside,
             engine=engine_config(ctx.section("engine"), engine, ray_address, ray_workers, ray_gpus_per_worker))
