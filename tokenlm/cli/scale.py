"""`tokenlm scale`: the command line of tokenlm.pipeline.scale (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.core.errors import ConfigError
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.scale import SECTION, ScaleConfig, scale
from tokenlm.run.rundir import REPORT


@click.command("scale")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--hours", help="Comma list of pretraining sizes in hours. [the recipe's scale.hours, else "
                              "0.25,0.5,1,2]")
@click.option("--with-levers", is_flag=True, default=None,
              help="Also train the recipe's levers: LMs (other objectives, contexts) at the largest size. [off]")
@click.option("--device", help="cpu, cuda or auto. [the recipe's run.device, else auto]")
@click.option("--no-progress", is_flag=True, help="No progress bars. [off]")
def command(recipe, hours, with_levers, device, no_progress):
    """Probe accuracy against pretraining hours: the self-supervised stages trained on nested
    subsets of the corpus, each probed on every task. Writes RUN/scale/."""
    ctx = RunContext.create(None, recipe, device=device, progress=not no_progress)
    try:
        override = {"hours": [float(h) for h in hours.split(",") if h.strip()]} if hours else {}
    except ValueError:
        raise ConfigError(f"--hours takes a comma list of numbers, got {hours!r}") from None
    out = scale(ctx, ctx.config(ScaleConfig, SECTION, {**override, "with_levers": with_levers}))
    click.echo((out / REPORT).read_text())
