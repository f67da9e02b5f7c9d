"""Command-line options shared by several commands: training (pretrain, vocoder), the CNN
baselines (baselines, probe) and reading a dataset (prepare, tokenize).

    @training_options(LM_TRAINING_DEFAULTS, items="Sequences (of context codes)", seeds="batches and dropout")
    def command(run, ..., device, no_progress, **options): ...

Every training option defaults to None ("not given"), so the recipe's value, then the
stage's own default, applies; the help shows that default, which differs per stage.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import click

from tokenlm.core.config import build
from tokenlm.pipeline.registry import artifact_settings


def shown(value) -> str:
    """A default as the help shows it: on/off, none, 0.001, comma lists."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    return str(value)


def config_option(*decls, config, field: str, help: str, **kwargs) -> Callable:
    """A click option that sets ``field`` of ``config`` (a config dataclass or an instance: a
    stage's own defaults). Its help ends with that field's default, read from the config, never
    typed; the option records where it comes from, and the tests compare the two."""
    value = getattr(config() if isinstance(config, type) else config, field)
    option = click.option(*decls, help=f"{help} [{shown(value)}]", **kwargs)

    def decorate(command: Callable) -> Callable:
        command = option(command)
        command.__click_params__[-1].config_default = (config, field)
        return command

    return decorate


def default_option(*decls, default, help: str, **kwargs) -> Callable:
    """A click option with a fixed default: its help ends with that default, from one place."""
    return click.option(*decls, default=default, help=f"{help} [{shown(default)}]", **kwargs)


def training_options(defaults: Mapping[str, Any], *, items: str, seeds: str) -> Callable:
    """Add --steps, --batch-size, --lr, --warmup-steps, --eval-every, --patience, --seed,
    --device and --no-progress to a click command.

    ``defaults``: the stage's TrainConfig defaults where they differ from TrainConfig's (shown
    in the help); ``items``: what a batch holds ("Crops"); ``seeds``: what the seed draws
    besides the initial weights ("crops and sampling").
    """
    from tokenlm.training.config import TrainConfig  # torch loads with it: not for `tokenlm run --help`

    stage = build(TrainConfig, defaults)  # this stage's defaults
    options = [
        config_option("--steps", type=int, config=stage, field="steps",
                      help="Optimiser steps (upper bound with early stopping)."),
        config_option("--batch-size", type=int, config=stage, field="batch_size", help=f"{items} per step and process."),
        config_option("--lr", type=float, config=stage, field="lr", help="Peak learning rate."),
        config_option("--warmup-steps", type=int, config=stage, field="warmup_steps",
                      help="Linear warmup steps before the cosine decay."),
        config_option("--eval-every", type=int, config=stage, field="eval_every",
                      help="Steps between validations and checkpoints."),
        config_option("--patience", type=int, config=stage, field="patience",
                      help="Validations without improvement before stopping; 0 = never."),
        config_option("--seed", type=int, config=stage, field="seed", help=f"Seed of the weights, {seeds}."),
        click.option("--device", help="cpu, cuda or auto. [auto]"),
        click.option("--no-progress", is_flag=True, help="No progress bars. [off]"),
    ]

    return lambda command: _all_of(options)(artifact_options(command))


def artifact_options(command: Callable) -> Callable:
    """Add --keep-checkpoints and --log-to: what a training leaves besides its model. The
    command never sees them: it runs inside ``keeping_checkpoints`` and ``logging_to`` (else
    its recipe's run.keep_checkpoints and run.log_to)."""
    @functools.wraps(command)
    def wrapper(*args, keep_checkpoints=None, log_to=None, **kwargs):
        from tokenlm.core.config import recipe_section

        with artifact_settings(keep_checkpoints, log_to, recipe_section(kwargs.get("recipe"), "run")):
            return command(*args, **kwargs)

    for option in reversed([
        click.option("--keep-checkpoints", is_flag=True, default=None,
                     help="Keep each training's ckpt/ (resume state) after its stage finishes. [off]"),
        click.option("--log-to", help="Also log training to trackers (comma list): tensorboard, wandb, mlflow "
                                      "(offline, inside the stage's folder). [none]"),
    ]):
        wrapper = option(wrapper)
    return wrapper


def baseline_options(*, seeds: str, folds: str) -> Callable:
    """Add --epochs, --simclr-epochs, --weights, --seed, --no-folds, --device and --no-progress: the
    options of the commands that train the CNN baselines. ``seeds``: what the seed drives;
    ``folds``: what --no-folds skips."""
    from tokenlm.pipeline.probe_config import BaselinesConfig, ProbeConfig

    options = [
        config_option("--epochs", type=int, config=BaselinesConfig, field="epochs",
                      help="Upper bound on supervised baseline epochs (early stopping on val)."),
        config_option("--simclr-epochs", type=int, config=BaselinesConfig, field="simclr_epochs",
                      help="SimCLR training epochs."),
        click.option("--weights", type=click.Path(dir_okay=False),
                     help="ImageNet weights (safetensors or torch state dict) for the one ImageNet-style CNN "
                          "listed (resnet18, resnet50 or densenet121): fine-tuned from them, not random init. "
                          "[random init]"),
        config_option("--seed", type=int, config=ProbeConfig, field="seed", help=f"Seed for {seeds}."),
        click.option("--no-folds", is_flag=True, default=None, help=f"Skip {folds}. [off]"),
        click.option("--device", help="cpu, cuda or auto. [auto]"),
        click.option("--no-progress", is_flag=True, help="No progress bars. [off]"),
    ]

    return _all_of(options)


def data_options() -> Callable:
    """Add --hash-content and --allow-outside: how a command that runs ``prepare`` reads the
    dataset. Both default to None ("not given"), so the recipe's data section applies."""
    return _all_of([
        click.option("--hash-content", is_flag=True, default=None,
                     help="Identify input files by a hash of their bytes too (reads every file once more). [off]"),
        click.option("--allow-outside", is_flag=True, default=None,
                     help="Accept manifest paths outside the manifest's folder. [off]"),
    ])


def engine_options() -> Callable:
    """Add --engine, --ray-address, --ray-workers and --ray-gpus-per-worker: where a command featurises and encodes
    clips (``tokenlm.engine``). Each defaults to None ("not given"), so the recipe's
    ``engine:`` section applies, then local."""
    from tokenlm.engine import ENGINES

    return _all_of([
        click.option("--engine", type=click.Choice(ENGINES),
                     help="Where clips are featurised and encoded: this process, or Ray Data workers "
                          "(pip install 'tokenlm[ray]'); the same bytes either way. [local]"),
        click.option("--ray-address", help="The Ray cluster to join. [RAY_ADDRESS, else a local Ray instance]"),
        click.option("--ray-workers", type=int, help="Ray workers, one CPU each. [every CPU of the cluster]"),
        click.option("--ray-gpus-per-worker", type=float,
                     help="GPUs each encoding worker asks Ray for (e.g. 0.25); untested on GPUs. [0: CPU]"),
    ])


def _all_of(options: list[Callable]) -> Callable:
    """One decorator applying ``options`` so that they list in order, top first."""
    def decorate(command: Callable) -> Callable:
        for option in reversed(options):  # click lists options in decorator order
            command = option(command)
        return command

    return decorate


def run_argument(command: Callable) -> Callable:
    """Add the RUN argument (the run folder, as every command takes it) and keep the older
    ``--out RUN`` of prepare and tokenize working, its help saying what it is now. (No note
    on stderr: scripts that check a command's one-line error keep working.)"""
    @functools.wraps(command)
    def wrapper(*args, run=None, old_out=None, **kwargs):
        if old_out is not None:
            if run is not None and run != old_out:
                from tokenlm.core.errors import ConfigError

                raise ConfigError(f"two run folders: RUN {run} and --out {old_out} (the older spelling of RUN): "
                                  f"give one")
            run = old_out
        return command(*args, run=run, **kwargs)

    wrapper = click.option("--out", "old_out", type=click.Path(file_okay=False), metavar="RUN",
                           help="The older spelling of the RUN argument (still works). [none]")(wrapper)
    return click.argument("run", required=False, type=click.Path(file_okay=False))(wrapper)


def with_common_options(command: click.Command) -> click.Command:
    """Give ``command`` the options every command has, in one place (tokenlm.cli applies it to
    each): ``--no-progress`` turns off every progress bar of the command (tokenlm.core.progress).
    A command that reads the flag itself keeps receiving it."""
    if getattr(command, "_tokenlm_common", False):
        return command
    own = any(param.name == "no_progress" for param in command.params)
    if not own:
        command.params.append(click.Option(["--no-progress"], is_flag=True, help="No progress bars. [off]"))
    callback = command.callback

    @functools.wraps(callback)
    def run_with_common(*args, **kwargs):
        from tokenlm.core.progress import set_progress

        no_progress = kwargs.get("no_progress") if own else kwargs.pop("no_progress", False)
        set_progress(not no_progress)
        try:
            return callback(*args, **kwargs)
        finally:
            set_progress(True)

    command.callback = run_with_common
    command._tokenlm_common = True
    return command
