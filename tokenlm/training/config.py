"""How a model is trained (``TrainConfig``) and what training leaves behind (``TrainResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenlm.training.data import EpochBatches

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. ``device`` is not part of what the model learns: stages leave
    it out of their cache key, so switching devices resumes instead of retraining."""

    steps: int = 2000  # optimiser steps (upper bound when early stopping is on)
    batch_size: int = 32  # per process
    lr: float = 1e-3  # peak learning rate, reached after warmup
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices and embeddings only
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    eval_every: int = 100  # steps between validations
    eval_batches: int = 0  # validation batches per evaluation; 0 = all of them
    ckpt_every: int = 0  # steps between checkpoints; 0 = at every evaluation
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    log_every: int = 10  # steps between rows of train_log.csv
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    device: str = "auto"  # auto, cpu, cuda, cuda:1

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_batches", "ckpt_every", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas takes two numbers, got {self.betas!r}")

    @property
    def checkpoint_interval(self) -> int:
        return self.ckpt_every or self.eval_every

    @classmethod
    def for_epochs(cls, data: EpochBatches, epochs: int, *, lr: float, weight_decay: float, patience: int = 0,
                   seed: int = 0) -> TrainConfig:
        """Epoch-style training the way ``torch.optim.AdamW(params, lr, weight_decay)`` alone
        does it: a constant learning rate, torch's default betas, no clipping, fp32; one
        evaluation, log row and checkpoint per epoch, ``patience`` counted in epochs."""
        epoch = data.steps_per_epoch
        return cls(steps=epochs * epoch, batch_size=data.batch_size, lr=lr, min_lr_ratio=1.0, warmup_steps=0,
                   weight_decay=weight_decay, betas=(0.9, 0.999), grad_clip=0.0, eval_every=epoch,
                   log_every=epoch, patience=patience, seed=seed, precision="fp32")


@dataclass
class TrainResult:
    """What ``train`` leaves behind; the model itself holds the best (or last) weights."""

    step: int  # the last step trained
    best_step: int | None  # the step whose weights the model now holds (None: no validation)
    best_val_loss: float | None  # the validation loss at best_step (None: none computed)
    stopped_early: bool
    resumed_from: int  # 0 for a fresh start
    log_path: Path | None
    best_value: float | None = None  # the monitored metric at best_step
    # One record per evaluation period (every eval_every steps and the last step): step, the
    # mean training loss of the period, and the validation metrics when there are any.
    history: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time of the whole training, earlier runs of a resume included
