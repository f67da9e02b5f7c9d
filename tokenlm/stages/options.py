"""Command-line options shared by several commands: training (pretrain, vocoder), the CNN
baselines (baselines, probe) and reading a dataset (prepare, tokenize).

    @training_options(LM_TRAINING_DEFAULTS, items="Sequences (of context codes)", seeds="batches and dropout")
    def command(run, ..., device, no_progress, **options): ...

Every training option defaults to None ("not given"), so the recipe's value, then the
stage's own default, applies; the help shows that default, which differs per stage.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import click

from tokenlm.config import build
from tokenlm.training import TrainConfig


def training_options(defaults: Mapping[str, Any], *, items: str, seeds: str) -> Callable:
    """Add --steps, --batch-size, --lr, --warmup-steps, --eval-every, --patience, --seed,
    --device and --no-progress to a click command.

    ``defaults``: the stage's TrainConfig defaults where they differ from TrainConfig's (shown
    in the help); ``items``: what a batch holds ("Crops"); ``seeds``: what the seed draws
    besides the initial weights ("crops and sampling").
    """
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
        click.option("--device", help="cpu, cuda or auto (default)."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]

    return _all_of(options)


def baseline_options(*, seeds: str, folds: str) -> Callable:
    """Add --epochs, --simclr-epochs, --weights, --seed, --no-folds, --device and --no-progress: the
    options of the commands that train the CNN baselines. ``seeds``: what the seed drives;
    ``folds``: what --no-folds skips."""
    options = [
        click.option("--epochs", type=int, help="Upper bound on supervised baseline epochs (early stopping on val)."),
        click.option("--simclr-epochs", type=int, help="SimCLR training epochs."),
        click.option("--weights", type=click.Path(dir_okay=False),
                     help="ImageNet weights (safetensors or torch state dict) for the one ImageNet-style CNN "
                          "listed (resnet18, resnet50 or densenet121): fine-tuned from them, not random init."),
        click.option("--seed", type=int, help=f"Seed for {seeds}."),
        click.option("--no-folds", is_flag=True, default=None, help=f"Skip {folds}."),
        click.option("--device", help="cpu, cuda or auto (default)."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]

    return _all_of(options)


def data_options() -> Callable:
    """Add --hash-content and --allow-outside: how a command that runs ``prepare`` reads the
    dataset. Both default to None ("not given"), so the recipe's data section applies."""
    return _all_of([
        click.option("--hash-content", is_flag=True, default=None,
                     help="Identify input files by a hash of their bytes too (reads every file once more)."),
        click.option("--allow-outside", is_flag=True, default=None,
                     help="Accept manifest paths outside the manifest's folder."),
    ])


def _all_of(options: list[Callable]) -> Callable:
    """One decorator applying ``options`` so that they list in order, top first."""
    def decorate(command: Callable) -> Callable:
        for option in reversed(options):  # click lists options in decorator order
            command = option(command)
        return command

    return decorate
