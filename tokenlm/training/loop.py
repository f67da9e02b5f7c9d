"""The training loop: steps, evaluations, best weights, early stopping, checkpoints."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.tracking import close_all, open_trackers
from tokenlm.run.rundir import BEST_CHECKPOINT, CHECKPOINTS, LAST_CHECKPOINT, TRAIN_LOG
from tokenlm.training import checkpoint
from tokenlm.training.checkpoint import load_checkpoint, save_checkpoint, unwrap, weights
from tokenlm.training.config import TrainConfig, TrainResult
from tokenlm.training.data import Batch, EpochBatches, draw_batch, step_torch_seed, to_device
from tokenlm.training.distributed import DistContext, all_reduce_sum, setup_distributed
from tokenlm.training.log import CsvLog, GracefulInterrupt, Window, log_row, postfix, progress_bar
from tokenlm.training.optim import autocast, make_optimizer, make_scheduler

MODES = ("min", "max")

LossFn = Callable[[nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, int]"]


@dataclass
class _State:
    """Everything besides model/optimiser/scheduler that a resume must restore."""

    step: int = 0
    best_val: float | None = None  # the best value of the monitored metric
    best_step: int | None = None
    bad_evals: int = 0
    finished: bool = False
    stopped_early: bool = False
    period_loss: float = 0.0  # summed training loss since the last evaluation period ended
    period_steps: int = 0
    history: list = field(default_factory=list)


def train(
    model: nn.Module,
    cfg: TrainConfig,
    work_dir: str | Path,
    *,
    loss_fn: LossFn,
    train_batch: Callable[[np.random.Generator, int], Batch] | EpochBatches,
    val_batches: Callable[[], Iterable[Batch]] | None = None,
    val_metrics: Callable[[float], dict[str, float]] | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    monitor: str = "val_loss",
    mode: str = "min",
    count_items: Callable[[Batch], int] | None = None,
    items_name: str = "items",
    dist: DistContext | None = None,
    progress: bool = True,
    callbacks: Iterable[Callable[[int, dict], None]] = (),
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` steps (or until early stopping), resuming
    from ``work_dir/ckpt/last.json`` when an earlier run left one.

    Args:
        loss_fn: ``(model, batch) -> loss`` (mean over the batch) or ``(loss, count)``; count
            weights the batch in the validation mean. ``model`` is the DDP wrapper when
            distributed, so call it rather than its inner module.
        train_batch: ``(rng, batch_size) -> batch`` on CPU; must use only ``rng`` for
            randomness (that is what makes resume exact). Or an ``EpochBatches`` for data
            seen in epochs.
        val_batches: ``() -> iterable of batches``, the same every call; their mean loss is
            ``val_loss``.
        val_metrics: extra columns from the validation loss (e.g. perplexity).
        evaluate: ``model -> {metric: value}``, a whole-model evaluation (e.g. accuracy on
            whole clips) run with the inner module in eval mode without gradients, on every
            rank (it must give every rank the same answer).
        monitor, mode: the evaluation metric that picks the best weights and stops early, and
            whether lower ("min") or higher ("max") is better. Without val_batches and
            evaluate there is no validation: no early stopping, the last weights are kept.
        count_items: items (tokens, samples) in a batch, for the throughput column.
        dist: from ``setup_distributed()``; by default it is called here (the caller then owns
            ``cleanup_distributed()`` when running under torchrun).
        callbacks: ``f(step, record)`` after every step (record: loss, lr, and the validation
            metrics on evaluation steps); the place for tests' fault injection and custom logging.

    Returns a TrainResult; the model is left on ``dist.device`` in eval mode holding the best
    validation weights (or the last ones without validation).
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be min or max, got {mode!r}")
    dist = dist or setup_distributed(cfg.device)
    _check_epochs(train_batch, cfg, dist)
    device = dist.device
    work_dir = Path(work_dir)
    ckpt_dir = work_dir / CHECKPOINTS
    if dist.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_partial_writes(ckpt_dir)
    dist.barrier()

    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    state = _State()
    resumed_from = _resume(ckpt_dir / LAST_CHECKPOINT, model, optimizer, scheduler, state, dist)

    wrapped = model
    if dist.distributed:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    validates = val_batches is not None or evaluate is not None
    metric_names = list(val_metrics(1.0)) if val_metrics else []
    log = CsvLog(work_dir / TRAIN_LOG, items_name, metric_names) if dist.is_main else None
    elapsed_before = log.open(resume_step=state.step) if log else 0.0
    trackers = open_trackers(work_dir, desc) if dist.is_main else []  # fed the rows of train_log.csv

    def save_last():
        if dist.is_main:
            checkpoint.save_last(ckpt_dir / LAST_CHECKPOINT, model, optimizer, scheduler, dataclasses.asdict(state),
                                 {"seed": cfg.seed, "step": state.step, "world_size": dist.world_size})

    bar = progress_bar(cfg.steps, state.step, desc, enabled=progress and dist.is_main)
    interrupt = GracefulInterrupt(enabled=not dist.distributed)
    window = Window()
    started = time.time() - elapsed_before  # elapsed_s carries on across a resume
    try:
        with interrupt:
            while not state.finished and state.step < cfg.steps:
                step = state.step + 1
                t0 = time.perf_counter()
                loss, items, lr = _train_step(wrapped, model, optimizer, scheduler, cfg, dist, step, loss_fn,
                                              train_batch, count_items)
                state.step = step
                state.period_loss += loss
                state.period_steps += 1
                window.add(loss, items, time.perf_counter() - t0)
                record = {"loss": loss, "lr": lr}

                period_ends = step % cfg.eval_every == 0 or step == cfg.steps
                is_eval = validates and period_ends
                metrics = _validate(wrapped, val_batches, val_metrics, evaluate, loss_fn, cfg, dist) if is_eval else {}
                if is_eval:
                    metric_names += [name for name in metrics if name != "val_loss" and name not in metric_names]
                    record.update(_track_best(state, metrics, monitor, mode, step, model, ckpt_dir, cfg, dist))
                    record.update(metrics)
                if period_ends:  # one history record per period, validated or not
                    period_loss = state.period_loss / state.period_steps
                    state.history.append({"step": step, "train_loss": period_loss, **metrics})
                    state.period_loss, state.period_steps = 0.0, 0
                if step % cfg.log_every == 0 or is_eval or step == cfg.steps or state.stopped_early:
                    row = log_row(window, step, record, dist, started, items_name, metric_names)
                    if log:
                        log.write(row)
                    for tracker in trackers:
                        tracker.log(row)
                    bar.set_postfix(postfix(row, items_name, monitor), refresh=False)
                    window = Window()
                if state.stopped_early or step == cfg.steps:
                    state.finished = True
                saved = state.finished or step % cfg.checkpoint_interval == 0
                if saved:
                    save_last()
                bar.update(1)
                for callback in callbacks:
                    callback(step, record)
                if interrupt.requested:  # Ctrl-C during this step: keep it, then stop
                    if not saved:
                        save_last()
                    raise KeyboardInterrupt
    finally:
        bar.close()
        if log:
            log.close()
        close_all(trackers)

    dist.barrier()  # rank 0 may still be writing the best checkpoint from the last evaluation
    if state.best_step is None and any(monitor in h for h in state.history):  # each one NaN or inf
        raise ArtifactError(f"no evaluation in {state.step} steps gave a finite {monitor} (all NaN or inf): "
                            f"the validation data or the model's outputs are not finite; check the data")
    if state.best_step is not None:
        best = load_checkpoint(ckpt_dir / BEST_CHECKPOINT, device)
        model.load_state_dict(best["model"])
    model.eval()
    return TrainResult(step=state.step, best_step=state.best_step, best_val_loss=_val_loss_at_best(state, monitor),
                       stopped_early=state.stopped_early, resumed_from=resumed_from,
                       log_path=(work_dir / TRAIN_LOG) if dist.is_main else None, best_value=state.best_val,
                       history=list(state.history), elapsed_s=round(time.time() - started, 3))


def _val_loss_at_best(state: _State, monitor: str) -> float | None:
    if monitor == "val_loss":
        return state.best_val
    return next((h.get("val_loss") for h in state.history if h["step"] == state.best_step), None)


def _check_epochs(train_batch, cfg: TrainConfig, dist: DistContext) -> None:
    if not isinstance(train_batch, EpochBatches):
        return
    if train_batch.batch_size != cfg.batch_size or train_batch.world_size != dist.world_size:
        raise ConfigError(f"EpochBatches made for batch size {train_batch.batch_size} on "
                          f"{train_batch.world_size} process(es), training uses {cfg.batch_size} on "
                          f"{dist.world_size}")


def _train_step(wrapped, model, optimizer, scheduler, cfg, dist, step, loss_fn, train_batch, count_items):
    """One optimiser step on the batch that (seed, rank, step) names; returns (loss, items, lr)."""
    torch.manual_seed(step_torch_seed(cfg.seed, dist.rank, step))
    batch, size = draw_batch(train_batch, cfg.seed, dist.rank, step, cfg.batch_size)
    items = count_items(batch) if count_items else size
    batch = to_device(batch, dist.device)
    model.train()
    with autocast(cfg, dist.device):
        loss, _ = _loss_and_count(loss_fn(wrapped, batch))
    loss.backward()
    value = loss.detach().float().item()
    _stop_unless_finite(value, step, batch, dist)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return value, items, lr


def _stop_unless_finite(value: float, step: int, batch, dist: DistContext) -> None:
    """Raise when this step's loss is NaN or inf on any process. The processes agree first
    (one tiny all-reduce of a flag), so a bad batch on one rank stops every rank with the
    one-line error instead of leaving the others waiting in the next step's gradient sync."""
    finite = math.isfinite(value)
    bad_ranks = all_reduce_sum([0.0 if finite else 1.0], dist)[0]
    if not finite:
        raise _not_finite_error(step, value, batch)
    if bad_ranks:
        raise ArtifactError(f"the training loss of step {step} is NaN or infinite on {int(bad_ranks)} other "
                            f"process(es) (their error says why): every process stops")


def _not_finite_error(step: int, value: float, batch) -> ArtifactError:
    """Why a loss is NaN or inf: bad data (no learning rate can fix that) or divergence."""
    if not _all_finite(batch):
        return ArtifactError(f"the training batch of step {step} holds NaN or infinite values (loss {value}): "
                             f"the training data is not finite; rebuild it from audio that decodes to "
                             f"finite samples")
    return ArtifactError(f"training diverged at step {step} (loss {value}): lower the learning rate")


def _all_finite(batch) -> bool:
    """Whether every floating-point tensor of a batch (tensor, tuple/list, dict) is finite."""
    if isinstance(batch, torch.Tensor):
        return not batch.is_floating_point() or bool(torch.isfinite(batch).all())
    if isinstance(batch, dict):
        return all(_all_finite(v) for v in batch.values())
    if isinstance(batch, (tuple, list)):
        return all(_all_finite(v) for v in batch)
    return True


def _loss_and_count(out) -> tuple[torch.Tensor, int]:
    if isinstance(out, tuple):
        return out[0], int(out[1])
    return out, 1


def _validate(wrapped, val_batches, val_metrics, evaluate, loss_fn, cfg, dist) -> dict:
    """The evaluation's metrics: val_loss (and its derived columns), then evaluate's."""
    metrics = {}
    if val_batches is not None:
        val_loss = _val_loss(wrapped, val_batches, loss_fn, cfg, dist)
        metrics["val_loss"] = val_loss
        metrics.update(val_metrics(val_loss) if val_metrics else {})
    if evaluate is not None:
        model = unwrap(wrapped)
        model.eval()
        with torch.no_grad():
            metrics.update({name: float(value) for name, value in evaluate(model).items()})
        model.train()
    return metrics


@torch.no_grad()
def _val_loss(wrapped, val_batches, loss_fn, cfg, dist) -> float:
    """Mean validation loss, weighted by the counts loss_fn returns; ranks split the batches."""
    model = unwrap(wrapped)
    model.eval()
    total, count = 0.0, 0.0
    for i, batch in enumerate(val_batches()):
        if cfg.eval_batches and i >= cfg.eval_batches:
            break
        if i % dist.world_size != dist.rank:
            continue
        with autocast(cfg, dist.device):
            # The inner module: DDP's forward would try to sync buffers for nothing.
            loss, n = _loss_and_count(loss_fn(model, to_device(batch, dist.device)))
        total += float(loss) * n
        count += n
    total, count = all_reduce_sum([total, count], dist)
    model.train()
    return total / count if count else float("nan")


def _track_best(state: _State, metrics: dict, monitor: str, mode: str, step: int, model, ckpt_dir: Path,
                cfg: TrainConfig, dist: DistContext) -> dict:
    """Keep the best weights, count evaluations without improvement, decide early stopping."""
    if monitor not in metrics:
        raise ConfigError(f"monitor {monitor!r} is not among the evaluation's metrics ({', '.join(metrics)})")
    value = metrics[monitor]
    if _improves(value, state.best_val, mode):
        state.best_val, state.best_step, state.bad_evals = value, step, 0
        if dist.is_main:
            save_checkpoint({"model": weights(model), "step": step, monitor: value}, ckpt_dir / BEST_CHECKPOINT)
    else:
        state.bad_evals += 1
        if cfg.patience and state.bad_evals >= cfg.patience:
            state.stopped_early = True
    return {f"best_{monitor}": state.best_val}


def _improves(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):  # NaN compares false both ways: it must never become the best
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _resume(path: Path, model, optimizer, scheduler, state: _State, dist: DistContext) -> int:
    """Load the last checkpoint into the fresh model/optimiser/scheduler/state; returns its step (0: none)."""
    ckpt = checkpoint.resume(path, model, optimizer, scheduler, dist.device)
    if ckpt is None:
        return 0
    for key, value in ckpt["state"].items():
        setattr(state, key, value)
    if dist.is_main:
        checkpoint.say_resuming(state.step, ckpt["data"]["world_size"], dist.world_size)
    return state.step
