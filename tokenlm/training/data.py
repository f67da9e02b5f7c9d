"""Batches as a pure function of (seed, rank, step), streamed or in epochs.

Resuming a run needs only its step: the batch of any step can be drawn again, so nothing is
replayed or skipped and an interrupted run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

Batch = Any


def batch_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The generator a batch is drawn from: a pure function of (seed, rank, step)."""
    return np.random.default_rng([seed, rank, step])


def step_torch_seed(seed: int, rank: int, step: int) -> int:
    """torch's seed for a step (dropout, in-model noise)."""
    # A different stream from batch_rng's (the trailing 1) so dropout and data do not correlate.
    return int(np.random.SeedSequence([seed, rank, step, 1]).generate_state(1, np.uint64)[0] >> 1)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move the tensors of a batch (tensor, tuple/list, dict) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class EpochBatches:
    """Epoch-style data for ``train``: each epoch visits every example once, in an order
    that is a pure function of (seed, epoch), so the batch of any step can be drawn again.

    Pass it as ``train`` 's ``train_batch``; ``make_batch(rng, indices)`` builds the batch of
    the examples ``indices`` (``rng`` is the step's generator, for random crops and the like).
    Configs in epochs map to steps with ``steps_per_epoch``::

        data = EpochBatches(len(dataset), 32, make_batch)
        TrainConfig(steps=epochs * data.steps_per_epoch, eval_every=data.steps_per_epoch, ...)

    An epoch's last batch is kept when it has at least ``min_batch`` examples (2 where one
    example cannot train: batch norm, contrastive losses), else those examples wait for a
    later epoch's shuffle. Under DDP each epoch's order is dealt out between the
    ``world_size`` ranks (a remainder of fewer than ``world_size`` examples is left out).
    """

    def __init__(self, size: int, batch_size: int, make_batch: Callable[[np.random.Generator, np.ndarray], Batch],
                 *, min_batch: int = 1, world_size: int = 1):
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}")
        self.size, self.batch_size, self.make_batch = size, batch_size, make_batch
        self.world_size = world_size
        self.per_rank = size // world_size
        full, rest = divmod(self.per_rank, batch_size)
        self.steps_per_epoch = full + (1 if rest >= max(1, min_batch) else 0)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{size} examples make no batch of at least {min_batch} per process")
        self._order_cache: tuple = (None, None)

    def epoch(self, step: int) -> int:
        """The epoch (from 1) that step ``step`` (from 1) belongs to."""
        return (step - 1) // self.steps_per_epoch + 1

    def indices(self, seed: int, rank: int, step: int) -> np.ndarray:
        """The examples of step ``step`` on rank ``rank``."""
        epoch, position = divmod(step - 1, self.steps_per_epoch)
        mine = self._order(seed, epoch)[rank::self.world_size][: self.per_rank]
        return mine[position * self.batch_size:(position + 1) * self.batch_size]

    def _order(self, seed: int, epoch: int) -> np.ndarray:
        # One permutation per epoch, kept while the epoch lasts. Its seed words end in 2, a
        # stream apart from batch_rng's (which ends in an implicit 0) and the torch seed's (1).
        if self._order_cache[0] != (seed, epoch):
            order = np.random.default_rng([seed, epoch, 0, 2]).permutation(self.size)
            self._order_cache = ((seed, epoch), order)
        return self._order_cache[1]


def draw_batch(train_batch, seed: int, rank: int, step: int, batch_size: int) -> tuple[Batch, int]:
    """The batch of step ``step`` and its number of examples (from a batch function or an
    EpochBatches)."""
    rng = batch_rng(seed, rank, step)
    if isinstance(train_batch, EpochBatches):
        indices = train_batch.indices(seed, rank, step)
        return train_batch.make_batch(rng, indices), len(indices)
    return train_batch(rng, batch_size), batch_size
