"""`tokenlm pretrain`: the command line of tokenlm.pipeline.pretrain (options in, library call out)."""

from __future__ import annotations

import os

import click

from tokenlm.cli.options import config_option, training_options
from tokenlm.models.gpt import OBJECTIVES, LMConfig
from tokenlm.pipeline.pretrain import LM_TRAINING_DEFAULTS, pretrain_from_context
from tokenlm.pipeline.registry import RunContext
from tokenlm.run.rundir import TRAIN_LOG


@click.command("pretrain")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("-K", "--codebook-size", type=int, help="Which tokens to train on. [the run's current K]")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (section lm, with lm.training). [none]")
@training_options(LM_TRAINING_DEFAULTS, items="Sequences (of context codes)", seeds="batches and dropout")
@config_option("--n-layer", type=int, config=LMConfig, field="n_layer", help="Transformer blocks.")
@config_option("--n-head", type=int, config=LMConfig, field="n_head", help="Attention heads.")
@config_option("--n-embd", type=int, config=LMConfig, field="n_embd", help="Model width.")
@config_option("--context", type=int, config=LMConfig, field="context", help="Context length in codes.")
@config_option("--dropout", type=float, config=LMConfig, field="dropout", help="Residual/embedding dropout.")
@config_option("--objective", type=click.Choice(OBJECTIVES),
              config=LMConfig, field="objective", help="next (GPT), multi (also codes t+2..t+n) or masked (masked spans, bidirectional).")
@config_option("--predict-ahead", type=int, config=LMConfig, field="predict_ahead", help="multi: codes predicted ahead, t+1..t+n.")
@config_option("--attn", "attn_implementation", type=click.Choice(["auto", "eager", "sdpa"]),
              config=LMConfig, field="attn_implementation", help="Attention implementation; auto = the fastest measured (sdpa).")
def command(run, codebook_size, recipe, device, no_progress, **options):
    """Train the GPT code language model on RUN/tokens and save it to RUN/lm.

    Rerunning after an interruption (Ctrl-C, kill -9) resumes from the last checkpoint.
    Several processes (DistributedDataParallel, gloo on CPU, nccl on GPU):

    \b
      tokenlm pretrain runs/demo
      tokenlm pretrain runs/demo --config recipes/demo.yaml --steps 500
      torchrun --nproc_per_node=2 -m tokenlm pretrain runs/demo
    """
    ctx = RunContext.create(run, recipe, device=device, progress=not no_progress)
    out = pretrain_from_context(ctx, codebook_size, options)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process speaks
        click.echo(f"lm: {out}\nlog: {out / TRAIN_LOG}")
