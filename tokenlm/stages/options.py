"""Command-line options shared by several commands: training (pretrain, vocoder), the CNN
baselines (baselines, probe) and reading a dataset (prepare, tokenize).

    @training_options(LM_TRAINING_DEFAULTS, items="Sequences (of context codes)", seeds="batches and dropout")
    def command(run, ..., device, no_progress, **options): ...

Every training option defaults to None ("not given"), so the recipe's value, then the
stage's own default, applies; the help shows that default, which differs per stage.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Any, Callable, Mapping

import click

from tokenlm.config import build


def training_options(defaults: Mapping[str, Any], *, items: str, seeds: str) -> Callable:
    """Add --steps, --batch-size, --lr, --warmup-steps, --eval-every, --patience, --seed,
    --device and --no-progress to a click command.

    ``defaults``: the stage's TrainConfig defaults where they differ from TrainConfig's (shown
    in the help); ``items``: what a batch holds ("Crops"); ``seeds``: what the seed draws
    besides the initial weights ("crops and sampling").
    """
    from tokenlm.training.config import TrainConfig  # torch loads with it: not for `tokenlm run --help`

    shown = build(TrainConfig, defaults)
    options = [
        click.option("--steps", type=int, help=f"Optimiser steps (upper bound with early stopping). [{shown.steps}]"),
        click.option("--batch-size", type=int, help=f"{items} per step and process. [{shown.batch_size}]"),
        click.option("--lr", type=float, help=f"Peak learning rate. [{shown.lr:g}]"),
        click.option("--warmup-steps", type=int,
                     help=f"Linear warmup steps before the cosine decay. [{shown.warmup_steps}]"),
        click.option("--eval-every", type=int, help=f"Steps between validations and checkpoints. [{shown.eval_every}]"),
        click.option("--patience", type=int,
                     help=f"Validations without improvement before stopping; 0 = never. [{shown.patience}]"),
        click.option("--seed", type=int, help=f"Seed of the weights, {seeds}. [{shown.seed}]"),
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
        from tokenlm.config import recipe_section

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


def artifact_settings(keep_checkpoints, log_to, run_section: Mapping[str, Any] | None = None) -> ExitStack:
    """The context of ``--keep-checkpoints`` / ``--log-to``, falling back on a recipe's
    ``run.keep_checkpoints`` / ``run.log_to``."""
    from tokenlm.artifacts import keeping_checkpoints
    from tokenlm.tracking import logging_to

    section = run_section or {}
    stack = ExitStack()
    keep = keep_checkpoints if keep_checkpoints is not None else section.get("keep_checkpoints", False)
    if not isinstance(keep, bool):
        from tokenlm.errors import ConfigError

        raise ConfigError(f"option 'run.keep_checkpoints' takes true/false, got {keep!r}")
    stack.enter_context(keeping_checkpoints(keep))
    stack.enter_context(logging_to(log_to if log_to is not None else section.get("log_to")))
    return stack


def baseline_options(*, seeds: str, folds: str) -> Callable:
    """Add --epochs, --simclr-epochs, --weights, --seed, --no-folds, --device and --no-progress: the
    options of the commands that train the CNN baselines. ``seeds``: what the seed drives;
    ``folds``: what --no-folds skips."""
    options = [
        click.option("--epochs", type=int,
                     help="Upper bound on supervised baseline epochs (early stopping on val). [60]"),
        click.option("--simclr-epochs", type=int, help="SimCLR training epochs. [50]"),
        click.option("--weights", type=click.Path(dir_okay=False),
                     help="ImageNet weights (safetensors or torch state dict) for the one ImageNet-style CNN "
                          "listed (resnet18, resnet50 or densenet121): fine-tuned from them, not random init. "
                          "[random init]"),
        click.option("--seed", type=int, help=f"Seed for {seeds}. [0]"),
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
    """Add --engine, --ray-address and --ray-workers: where a command featurises and encodes
    clips (``tokenlm.engine``). Each defaults to None ("not given"), so the recipe's
    ``engine:`` section applies, then local."""
    from tokenlm.engine import ENGINES

    return _all_of([
        click.option("--engine", type=click.Choice(ENGINES),
                     help="Where clips are featurised and encoded: this process, or Ray Data workers "
                          "(pip install 'tokenlm[ray]'); the same bytes either way. [local]"),
        click.option("--ray-address", help="The Ray cluster to join. [RAY_ADDRESS, else a local Ray instance]"),
        click.option("--ray-workers", type=int, help="Ray workers, one CPU each. [every CPU of the cluster]"),
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
                from tokenlm.errors import ConfigError

                raise ConfigError(f"two run folders: RUN {run} and --out {old_out} (the older spelling of RUN): "
                                  f"give one")
            run = old_out
        return command(*args, run=run, **kwargs)

    wrapper = click.option("--out", "old_out", type=click.Path(file_okay=False), metavar="RUN",
                           help="The older spelling of the RUN argument (still works).")(wrapper)
    return click.argument("run", required=False, type=click.Path(file_okay=False))(wrapper)


def with_common_options(command: click.Command) -> click.Command:
    """Give ``command`` the options every command has, in one place (tokenlm.cli applies it to
    each): ``--no-progress`` turns off every progress bar of the command (tokenlm.progress).
    A command that reads the flag itself keeps receiving it."""
    if getattr(command, "_tokenlm_common", False):
        return command
    own = any(param.name == "no_progress" for param in command.params)
    if not own:
        command.params.append(click.Option(["--no-progress"], is_flag=True, help="No progress bars. [off]"))
    callback = command.callback

    @functools.wraps(callback)
    def run_with_common(*args, **kwargs):
        from tokenlm.progress import set_progress

        no_progress = kwargs.get("no_progress") if own else kwargs.pop("no_progress", False)
        set_progress(not no_progress)
        try:
            return callback(*args, **kwargs)
        finally:
            set_progress(True)

    command.callback = run_with_common
    command._tokenlm_common = True
    return command
