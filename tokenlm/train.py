"""One training loop for every gradient-trained model of the pipeline (code LM, WaveNet).

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
  step. Resuming therefore needs only the step, never replays or skips data, and an
  interrupted run ends bit-identical to an uninterrupted one on the same machine.
- Checkpoints in ``work_dir/ckpt/last.pt`` every ``ckpt_every`` steps (model, optimiser,
  scheduler, step, RNG states of python/numpy/torch/CUDA, data cursor, early-stopping state),
  written atomically (temp file + fsync + os.replace) so kill -9 at any moment leaves the
  previous one intact. ``best.pt`` holds the weights with the best validation loss. Both load
  with ``torch.load(weights_only=True)``.
- Validation every ``eval_every`` steps, early stopping after ``patience`` evaluations without
  improvement, the best weights loaded back at the end.
- ``work_dir/train_log.csv`` (step, lr, loss, val_loss, extra validation metrics, items/s,
  elapsed) and a tqdm bar with the live figures.
- Several processes: launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment)
  the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on GPU); each rank draws
  its own batches, validation is sharded and all-reduced, only rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from tokenlm.errors import ArtifactError, ConfigError
from tokenlm.runtime import cpu_threads, pick_device

__all__ = [
    "TrainConfig",
    "TrainResult",
    "DistContext",
    "setup_distributed",
    "cleanup_distributed",
    "train",
    "batch_rng",
    "lr_factor",
    "make_optimizer",
    "rng_state",
    "set_rng_state",
    "atomic_torch_save",
    "load_checkpoint",
    "to_device",
]

CKPT_DIR = "ckpt"
LAST = "last.pt"
BEST = "best.pt"
LOG_FILE = "train_log.csv"
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


@dataclass
class TrainResult:
    """What ``train`` leaves behind; the model itself holds the best (or last) weights."""

    step: int  # the last step trained
    best_step: int | None  # the step whose weights the model now holds (None: no validation)
    best_val_loss: float | None
    stopped_early: bool
    resumed_from: int  # 0 for a fresh start
    log_path: Path | None


# ---- processes ------------------------------------------------------------------------

@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def setup_distributed(device: str | None = None) -> DistContext:
    """Read torchrun's environment and join the process group (gloo on CPU, nccl on CUDA).

    Without torchrun this is one process of rank 0 (torch's thread setting is left alone).
    Calling it twice is harmless. Under torchrun on CPU the cores are shared out between the
    processes of a machine, so that 2 ranks on 2 cores do not fight over 4 threads.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    chosen = pick_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    elif local_world > 1:
        torch.set_num_threads(max(1, cpu_threads() // local_world))
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        kwargs = {"device_id": chosen} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistContext(rank, world_size, local_rank, local_world, chosen)


def cleanup_distributed() -> None:
    """Leave the process group (if this process joined one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def distributed_stage(stage, device: str | None):
    """``(work_dir, DistContext)`` for training a stage, alone or as one rank under torchrun:
    rank 0 prepares the work folder (it may wipe a stale one) before any rank reads it, and
    the process group is left at the end."""
    dist = setup_distributed(device)
    try:
        work = stage.start() if dist.is_main else None
        dist.barrier()
        yield work or stage.work_dir, dist
    finally:
        if dist.distributed:
            cleanup_distributed()


def _all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    if not ctx.distributed:
        return values
    backend_device = ctx.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


# ---- randomness -----------------------------------------------------------------------

def batch_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The generator a batch is drawn from: a pure function of (seed, rank, step)."""
    return np.random.default_rng([seed, rank, step])


def _step_torch_seed(seed: int, rank: int, step: int) -> int:
    # A different stream from batch_rng's (the trailing 1) so dropout and data do not correlate.
    return int(np.random.SeedSequence([seed, rank, step, 1]).generate_state(1, np.uint64)[0] >> 1)


def rng_state() -> dict:
    """Python, numpy, torch and CUDA RNG states as tensors and plain numbers
    (loadable with ``torch.load(weights_only=True)``, unlike pickled tuples)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)


# ---- optimiser and schedule -----------------------------------------------------------

def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for the optimiser step that follows ``step`` completed steps:
    linear warmup to 1, then a cosine down to ``min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on tensors of 2+ dimensions (weights, embeddings) and none on
    biases and norm gains, which decay would only pull towards zero for nothing."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # The fused kernel is one pass over all parameters (CPU and CUDA): measurably faster than
    # foreach for small models where the optimiser step is a visible share of the step time.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)


def _autocast(cfg: TrainConfig, device: torch.device):
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        raise ConfigError("precision bf16 is for CUDA; use fp32 (or auto) on CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


# ---- checkpoints ----------------------------------------------------------------------

def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save that readers (and a kill -9) see as all-or-nothing: temp file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by ``train`` (weights_only: nothing but tensors and plain data)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which
        raise ArtifactError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0]})") from None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _state_dict(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}


# ---- the loop -------------------------------------------------------------------------

Batch = Any
LossFn = Callable[[nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, int]"]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move the tensors of a batch (tensor, tuple/list, dict) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _loss_and_count(out) -> tuple[torch.Tensor, int]:
    if isinstance(out, tuple):
        return out[0], int(out[1])
    return out, 1


@dataclass
class _State:
    """Everything besides model/optimiser/scheduler that a resume must restore."""

    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    finished: bool = False
    stopped_early: bool = False


def train(
    model: nn.Module,
    cfg: TrainConfig,
    work_dir: str | Path,
    *,
    loss_fn: LossFn,
    train_batch: Callable[[np.random.Generator, int], Batch],
    val_batches: Callable[[], Iterable[Batch]] | None = None,
    val_metrics: Callable[[float], dict[str, float]] | None = None,
    count_items: Callable[[Batch], int] | None = None,
    items_name: str = "items",
    dist: DistContext | None = None,
    progress: bool = True,
    callbacks: Iterable[Callable[[int, dict], None]] = (),
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` steps (or until early stopping), resuming
    from ``work_dir/ckpt/last.pt`` when an earlier run left one.

    Args:
        loss_fn: ``(model, batch) -> loss`` (mean over the batch) or ``(loss, count)``; count
            weights the batch in the validation mean. ``model`` is the DDP wrapper when
            distributed, so call it rather than its inner module.
        train_batch: ``(rng, batch_size) -> batch`` on CPU; must use only ``rng`` for
            randomness (that is what makes resume exact).
        val_batches: ``() -> iterable of batches``, the same every call. None: no validation,
            no early stopping, the last weights are kept.
        val_metrics: extra columns from the validation loss (e.g. perplexity).
        count_items: items (tokens, samples) in a batch, for the throughput column.
        dist: from ``setup_distributed()``; by default it is called here (the caller then owns
            ``cleanup_distributed()`` when running under torchrun).
        callbacks: ``f(step, record)`` after every step (record: loss, lr, and val_* on
            evaluation steps); the place for tests' fault injection and custom logging.

    Returns a TrainResult; the model is left on ``dist.device`` in eval mode holding the best
    validation weights (or the last ones without validation).
    """
    dist = dist or setup_distributed(cfg.device)
    device = dist.device
    work_dir = Path(work_dir)
    ckpt_dir = work_dir / CKPT_DIR
    if dist.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob(".*.tmp-*"):  # a write that kill -9 cut short
            stale.unlink(missing_ok=True)
    dist.barrier()

    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    state = _State()
    resumed_from = _resume(ckpt_dir / LAST, model, optimizer, scheduler, state, dist)

    wrapped = model
    if dist.distributed:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    log = _CsvLog(work_dir / LOG_FILE, val_metrics, items_name) if dist.is_main else None
    elapsed_before = log.open(resume_step=state.step) if log else 0.0
    extra_names = list(val_metrics(1.0)) if val_metrics else []

    bar = _progress_bar(cfg.steps, state.step, desc, enabled=progress and dist.is_main)
    interrupt = _GracefulInterrupt(enabled=not dist.distributed)
    window = {"loss": 0.0, "steps": 0, "items": 0.0, "time": 0.0}
    started = time.time() - elapsed_before  # elapsed_s carries on across a resume
    try:
        with interrupt:
            while not state.finished and state.step < cfg.steps:
                step = state.step + 1
                t0 = time.perf_counter()
                loss, items, lr = _train_step(wrapped, model, optimizer, scheduler, cfg, dist, step, loss_fn,
                                              train_batch, count_items)
                state.step = step
                window["loss"] += loss
                window["steps"] += 1
                window["items"] += items
                window["time"] += time.perf_counter() - t0
                record = {"loss": loss, "lr": lr}

                is_eval = val_batches is not None and (step % cfg.eval_every == 0 or step == cfg.steps)
                if is_eval:
                    val_loss = _evaluate(wrapped, val_batches, loss_fn, cfg, dist)
                    record.update(_track_best(state, val_loss, step, model, ckpt_dir, cfg, dist))
                    record["val_loss"] = val_loss
                    record.update({name: value for name, value in (val_metrics(val_loss) if val_metrics else {}).items()})
                if step % cfg.log_every == 0 or is_eval or step == cfg.steps or state.stopped_early:
                    row = _log_row(window, step, record, dist, started, items_name, extra_names)
                    if log:
                        log.write(row)
                    bar.set_postfix(_postfix(row, items_name), refresh=False)
                    window = {"loss": 0.0, "steps": 0, "items": 0.0, "time": 0.0}
                if state.stopped_early or step == cfg.steps:
                    state.finished = True
                saved = state.finished or step % cfg.checkpoint_interval == 0
                if saved:
                    _save_last(ckpt_dir / LAST, model, optimizer, scheduler, state, cfg, dist)
                bar.update(1)
                for callback in callbacks:
                    callback(step, record)
                if interrupt.requested:  # Ctrl-C during this step: keep it, then stop
                    if not saved:
                        _save_last(ckpt_dir / LAST, model, optimizer, scheduler, state, cfg, dist)
                    raise KeyboardInterrupt
    finally:
        bar.close()
        if log:
            log.close()

    dist.barrier()  # rank 0 may still be writing best.pt from the last evaluation
    if state.best_step is not None:
        best = load_checkpoint(ckpt_dir / BEST, device)
        model.load_state_dict(best["model"])
    model.eval()
    return TrainResult(step=state.step, best_step=state.best_step, best_val_loss=state.best_val,
                       stopped_early=state.stopped_early, resumed_from=resumed_from,
                       log_path=(work_dir / LOG_FILE) if dist.is_main else None)


def _train_step(wrapped, model, optimizer, scheduler, cfg, dist, step, loss_fn, train_batch, count_items):
    """One optimiser step on the batch that (seed, rank, step) names; returns (loss, items, lr)."""
    torch.manual_seed(_step_torch_seed(cfg.seed, dist.rank, step))
    batch = train_batch(batch_rng(cfg.seed, dist.rank, step), cfg.batch_size)
    items = count_items(batch) if count_items else cfg.batch_size
    batch = to_device(batch, dist.device)
    model.train()
    with _autocast(cfg, dist.device):
        loss, _ = _loss_and_count(loss_fn(wrapped, batch))
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    value = loss.detach().float().item()
    if not math.isfinite(value):
        raise ArtifactError(f"training diverged at step {step} (loss {value}): lower the learning rate")
    return value, items, lr


@torch.no_grad()
def _evaluate(wrapped, val_batches, loss_fn, cfg, dist) -> float:
    """Mean validation loss, weighted by the counts loss_fn returns; ranks split the batches."""
    model = _unwrap(wrapped)
    model.eval()
    total, count = 0.0, 0.0
    for i, batch in enumerate(val_batches()):
        if cfg.eval_batches and i >= cfg.eval_batches:
            break
        if i % dist.world_size != dist.rank:
            continue
        with _autocast(cfg, dist.device):
            # The inner module: DDP's forward would try to sync buffers for nothing.
            loss, n = _loss_and_count(loss_fn(model, to_device(batch, dist.device)))
        total += float(loss) * n
        count += n
    total, count = _all_reduce_sum([total, count], dist)
    model.train()
    return total / count if count else float("nan")


def _track_best(state: _State, val_loss: float, step: int, model, ckpt_dir: Path, cfg: TrainConfig,
                dist: DistContext) -> dict:
    """Keep the best weights, count evaluations without improvement, decide early stopping."""
    if state.best_val is None or val_loss < state.best_val:
        state.best_val, state.best_step, state.bad_evals = val_loss, step, 0
        if dist.is_main:
            atomic_torch_save({"model": _state_dict(model), "step": step, "val_loss": val_loss}, ckpt_dir / BEST)
    else:
        state.bad_evals += 1
        if cfg.patience and state.bad_evals >= cfg.patience:
            state.stopped_early = True
    return {"best_val_loss": state.best_val}


def _save_last(path: Path, model, optimizer, scheduler, state: _State, cfg: TrainConfig, dist: DistContext) -> None:
    if not dist.is_main:
        return
    atomic_torch_save({
        "model": _state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": dataclasses.asdict(state),
        # The data cursor: batches are a function of (seed, rank, step), so this is all of it.
        "data": {"seed": cfg.seed, "step": state.step, "world_size": dist.world_size},
        "rng": rng_state(),
    }, path)


def _resume(path: Path, model, optimizer, scheduler, state: _State, dist: DistContext) -> int:
    """Load ``last.pt`` into the fresh model/optimiser/scheduler/state; returns its step (0: none)."""
    if not path.is_file():
        return 0
    ckpt = load_checkpoint(path, dist.device)
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ArtifactError(f"{path} does not fit this model ({str(err).splitlines()[0]}); "
                            f"delete {path.parent} to start over") from None
    scheduler.load_state_dict(ckpt["scheduler"])
    for key, value in ckpt["state"].items():
        setattr(state, key, value)
    set_rng_state(ckpt["rng"])
    saved_world = ckpt["data"]["world_size"]
    if dist.is_main:
        note = "" if saved_world == dist.world_size else (
            f" (it ran on {saved_world} processes, now {dist.world_size}: the batch order changes from here)")
        print(f"resuming from step {state.step}{note}", file=sys.stderr, flush=True)
    return state.step


def _log_row(window, step, record, dist, started, items_name, extra_names) -> dict:
    loss_sum, steps, items, seconds = _all_reduce_sum(
        [window["loss"], float(window["steps"]), window["items"], window["time"]], dist)
    # Items add up over ranks; time is the same wall clock on every rank, so average it.
    seconds /= dist.world_size
    row = {"step": step, "lr": record["lr"], "loss": loss_sum / max(steps, 1)}
    row["val_loss"] = record.get("val_loss", "")
    for name in extra_names:
        row[name] = record.get(name, "")
    row[f"{items_name}_per_s"] = items / seconds if seconds > 0 else ""
    row["elapsed_s"] = round(time.time() - started, 3)
    return row


def _postfix(row: dict, items_name: str) -> dict:
    out = {"loss": f"{row['loss']:.3f}"}
    if row.get("val_loss") != "":
        out["val"] = f"{row['val_loss']:.3f}"
    rate = row.get(f"{items_name}_per_s")
    if rate != "":
        out[f"{items_name}/s"] = f"{rate:.0f}"
    return out


class _CsvLog:
    """train_log.csv, append-only; on resume, rows after the checkpoint's step are dropped
    (they will be logged again, identically)."""

    def __init__(self, path: Path, val_metrics, items_name: str):
        self.path = path
        extra = list(val_metrics(1.0)) if val_metrics else []
        self.columns = ["step", "lr", "loss", "val_loss", *extra, f"{items_name}_per_s", "elapsed_s"]
        self._file = None

    def open(self, resume_step: int) -> float:
        """Start (or trim and reopen) the log; returns the elapsed seconds of the last kept row."""
        rows = []
        if resume_step and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        try:
            return float(rows[-1]["elapsed_s"]) if rows else 0.0
        except (KeyError, ValueError):
            return 0.0

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


class _GracefulInterrupt:
    """First Ctrl-C: finish the current step, checkpoint, then raise KeyboardInterrupt.
    A second Ctrl-C interrupts at once (the last periodic checkpoint still resumes).
    Only for a single process in the main thread: under torchrun every rank would have to
    stop at the same step, and the periodic checkpoints already cover that case."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False
