"""`tokenlm rawlm`: the command line of tokenlm.pipeline.rawlm (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.cli.options import config_option
from tokenlm.pipeline.rawlm import MODELS, RawLMConfig, rawlm, rawlm_config
from tokenlm.pipeline.registry import RunContext
from tokenlm.run.rundir import REPORT


@click.command("rawlm")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("--models", help=f"Comma list of {','.join(MODELS)}. [all]")
@config_option("--context-ms", type=float, config=RawLMConfig, field="context_ms", help="Window the models read, in ms; its last half is scored.")
@config_option("--steps", type=int, config=RawLMConfig, field="steps", help="Training steps of each model.")
@click.option("--config", "recipe", type=click.Path(dir_okay=False), help="Recipe YAML (section: rawlm; run.dir). [none]")
@click.option("--device", help="cpu, cuda or auto. [auto]")
@click.option("--no-progress", is_flag=True, help="No progress bars. [off]")
def command(run, models, context_ms, steps, recipe, device, no_progress):
    """Next-sample prediction on RUN's mu-law audio: transformer vs WaveNet vs transformer + codes.

    \b
    tokenlm rawlm runs/demo
    tokenlm rawlm runs/demo --models transformer,wavenet --context-ms 32
    Writes RUN/rawlm/{results.json,report.md,samples/}.
    """
    ctx = RunContext.create(run, recipe, device=device, progress=not no_progress)
    out = rawlm(ctx.run, rawlm_config(ctx, {"models": models, "context_ms": context_ms, "steps": steps}),
                device=ctx.device, progress=ctx.progress)
    click.echo((out / REPORT).read_text())
