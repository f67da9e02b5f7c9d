"""`tokenlm tokenize`: the command line of tokenlm.pipeline.tokenize (options in, library call out)."""

from __future__ import annotations

from pathlib import Path

import click

from tokenlm.cli.options import config_option, data_options, engine_options, run_argument
from tokenlm.core.errors import TokenlmError
from tokenlm.data.features import FeatureConfig
from tokenlm.data.splits import SplitConfig
from tokenlm.engine import engine_config, engine_session
from tokenlm.models.autoencoder import AutoencoderConfig
from tokenlm.pipeline.prepare import data_flags, prepare
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.tokenize import encode_new_data, tokenize_from_context
from tokenlm.run.rundir import (
    is_finished,
)
from tokenlm.tokenizer.tokenizer import AutoencoderTraining, TokenizerConfig


@click.command("tokenize")
@run_argument
@click.option("--data", type=click.Path(), help="Dataset folder or manifest file. [the recipe's data.path]")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(), help="Encode --data with this trained tokenizer instead of training one. [none: train one]")
@config_option("-K", "--codebook-size", type=int, config=TokenizerConfig, field="codebook_size", help="Number of codes.")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (sections: data, features, split, tokenizer, codebook). [none]")
@config_option("--epochs", type=int, config=AutoencoderTraining, field="epochs", help="Autoencoder epochs (upper bound; early stopping on val).")
@config_option("--bottleneck", type=int, config=AutoencoderConfig, field="bottleneck", help="Autoencoder bottleneck width.")
@click.option("--device", help="cpu, cuda or auto. [auto]")
@click.option("--strict", is_flag=True, default=None, help="Fail if any clip is skipped. [off]")
@data_options()
@engine_options()
def command(run, data, tokenizer_path, codebook_size, recipe, epochs, bottleneck, device, strict, hash_content,
            allow_outside, engine, ray_address, ray_workers, ray_gpus_per_worker):
    """Train the autoencoder and codebook on the train split, then encode every clip into
    RUN (with --tokenizer: encode --data with that tokenizer into RUN).

    \b
    tokenlm tokenize runs/demo --data data/demo -K 256
    tokenlm tokenize runs/demo -K 512        # reuse the autoencoder, new codebook
    tokenlm tokenize OUT --tokenizer runs/demo/tokenizer --data NEWDIR
    """
    ctx = RunContext.create(run, recipe, device=device)
    engine = engine_config(ctx.section("engine"), engine, ray_address, ray_workers, ray_gpus_per_worker)
    data = data or ctx.section("data").get("path")
    split = ctx.config(SplitConfig, "split")
    if tokenizer_path:
        if not data:
            raise TokenlmError("--tokenizer needs --data: the audio to encode")
        flags = data_flags(ctx.section("data"), strict=strict, hash_content=hash_content, allow_outside=allow_outside)
        encode_new_data(Path(tokenizer_path), Path(data), ctx.run.root, split, codebook_size=codebook_size,
                        device=device, engine=engine, **flags)
        return
    if not data and not is_finished(ctx.run.features):
        raise TokenlmError(f"{ctx.run.root} has no features yet: pass --data DIR")
    with engine_session(engine):  # one Ray session for the features and the codes
        if data:
            flags = data_flags(ctx.section("data"), strict=strict, hash_content=hash_content,
                               allow_outside=allow_outside)
            prepare(data, ctx.run, ctx.config(FeatureConfig, "features"), split, engine=engine, **flags)
        tokens = tokenize_from_context(ctx, {"codebook_size": codebook_size, "epochs": epochs, "bottleneck": bottleneck}, engine)
    click.echo(f"tokenizer: {ctx.run.tokenizer}\ntokens:    {tokens}")
