"""One training loop for every gradient-trained model of the pipeline (autoencoder, code LM,
WaveNet, CNN baselines, SimCLR).

The loop knows nothing about the model: it is given a loss function and a batch function.

    result = train(model, TrainConfig(steps=2000), work_dir,
                   loss_fn=lambda model, batch: ...,            # scalar loss (or (loss, count))
                   train_batch=lambda rng, batch_size: ...,     # one batch from a numpy Generator
                   val_batches=lambda: [...],                   # fixed validation batches
                   count_items=lambda batch: n_tokens)          # for tokens/s

What it does for you:

- AdamW (weight decay on matrices only), linear warmup then cosine decay to ``min_lr_ratio``,
  gradient clipping, bf16 autocast on CUDA (fp32 on CPU).
- Batches are a pure function of (seed, rank, step): the batch function gets a generator
  seeded from those three numbers, and torch's RNG (dropout) is reseeded the same way every
  step. Data seen in epochs (``EpochBatches``) shuffles once per epoch from (seed, epoch).
  Resuming therefore needs only the step, never replays or skips data, and an interrupted
  run ends bit-identical to an uninterrupted one on the same machine.
- Checkpoints in ``work_dir/ckpt/last.json`` every ``ckpt_every`` steps (model, optimiser,
  scheduler, step, RNG states of python/numpy/torch/CUDA, data cursor, early-stopping state):
  tensors in a safetensors file, the rest in the JSON state file that names it, written so
  that kill -9 at any moment leaves the previous one intact. ``best.json`` holds the weights
  with the best monitored metric. No pickles: ``load_checkpoint`` reads both.
- Evaluation every ``eval_every`` steps: the validation loss of ``val_batches`` and/or a
  whole-model ``evaluate`` hook (e.g. accuracy); the ``monitor`` metric (lower or higher is
  better, ``mode``) picks the best weights, loaded back at the end, and early stopping after
  ``patience`` evaluations without improvement.
- ``work_dir/train_log.csv`` (step, lr, loss, val_loss, extra validation metrics, items/s,
  elapsed) and a tqdm bar with the live figures.
- Several processes: launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment)
  the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU); each rank draws
  its own batches, validation is sharded and all-reduced, only rank 0 writes files.

Modules: ``loop`` (train), ``config`` (TrainConfig, TrainResult), ``data`` (batches),
``optim`` (AdamW and schedule), ``checkpoint``, ``distributed``, ``log``.
"""

from tokenlm.training.checkpoint import (
    checkpoint_folder,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tokenlm.training.config import TrainConfig, TrainResult
from tokenlm.training.data import EpochBatches, batch_rng, to_device
from tokenlm.training.distributed import DistContext, cleanup_distributed, distributed_stage, setup_distributed
from tokenlm.training.loop import train
from tokenlm.training.optim import lr_factor, make_optimizer

__all__ = [
    "TrainConfig",
    "TrainResult",
    "DistContext",
    "setup_distributed",
    "cleanup_distributed",
    "distributed_stage",
    "train",
    "EpochBatches",
    "batch_rng",
    "lr_factor",
    "make_optimizer",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_folder",
    "to_device",
]
