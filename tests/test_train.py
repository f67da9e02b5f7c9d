"""The shared training loop on a toy model: schedule, pure batches, RNG state, checkpoints,
resume equality, early stopping, the log, whole-model evaluation and epoch-style data."""

from __future__ import annotations

import csv
import math
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import Crash, crash_at
from tokenlm.core.config import build
from tokenlm.core.errors import ConfigError
from tokenlm.training import (
    EpochBatches,
    TrainConfig,
    batch_rng,
    load_checkpoint,
    lr_factor,
    rng_state,
    save_checkpoint,
    set_rng_state,
    train,
)

W_TRUE = torch.tensor([[2.0, -1.0, 0.5]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only add sync


class Toy(nn.Module):
    """Regression with dropout, so the per-step torch seeding matters for equality."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(3, 16)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        return self.out(self.drop(torch.tanh(self.hidden(x))))


def toy_batch(rng: np.random.Generator, batch_size: int, sign: float = 1.0):
    x = torch.from_numpy(rng.standard_normal((batch_size, 3)).astype(np.float32))
    return x, sign * (x @ W_TRUE.T)


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), len(x)


def val_set(sign=1.0):
    batches = [toy_batch(np.random.default_rng(100 + i), 32, sign) for i in range(3)]
    return lambda: batches


def fresh_model():
    torch.manual_seed(0)
    return Toy()


def run(tmp_path, cfg, **kw):
    model = fresh_model()
    result = train(model, cfg, tmp_path, loss_fn=mse, train_batch=toy_batch, progress=False, **kw)
    return model, result


def test_config_validation():
    with pytest.raises(ConfigError, match="precision"):
        build(TrainConfig, {"precision": "fp16"})
    with pytest.raises(ConfigError, match="steps"):
        build(TrainConfig, {"steps": 0})
    assert build(TrainConfig, {"betas": [0.9, 0.99]}).betas == (0.9, 0.99)


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # decays monotonically
    assert factors[100] == pytest.approx(0.1)
    assert lr_factor(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine


def test_batches_are_a_pure_function_of_seed_rank_step():
    a = batch_rng(0, 0, 7).integers(0, 1000, 5)
    assert np.array_equal(a, batch_rng(0, 0, 7).integers(0, 1000, 5))
    assert not np.array_equal(a, batch_rng(0, 1, 7).integers(0, 1000, 5))
    assert not np.array_equal(a, batch_rng(0, 0, 8).integers(0, 1000, 5))


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.json")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "rng.json")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed away


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=8, lr=0.01, warmup_steps=5, eval_every=10, log_every=5, device="cpu")
    reference, ref_result = run(tmp_path / "ref", cfg, val_batches=val_set())
    with pytest.raises(Crash):  # dies at step 17: the last checkpoint is step 10
        run(tmp_path / "resumed", cfg, val_batches=val_set(), callbacks=[crash_at(17)])
    resumed, result = run(tmp_path / "resumed", cfg, val_batches=val_set())
    assert result.resumed_from == 10 and result.step == 30
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    last_ref = load_checkpoint(tmp_path / "ref" / "ckpt" / "last.json")["model"]
    last_res = load_checkpoint(tmp_path / "resumed" / "ckpt" / "last.json")["model"]
    assert all(torch.equal(last_ref[k], last_res[k]) for k in last_ref)
    # The log holds every step once, the replayed rows identical to the reference's.
    with open(tmp_path / "resumed" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "ref" / "train_log.csv") as f:
        ref_rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == [str(s) for s in range(5, 31, 5)]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert rows[-1]["val_loss"] and float(rows[-1]["items_per_s"]) > 0


def test_early_stopping_keeps_the_best_weights(tmp_path):
    # Validation wants the opposite function: it gets worse as training improves.
    cfg = TrainConfig(steps=200, batch_size=8, lr=0.01, warmup_steps=0, eval_every=5, patience=2, log_every=5,
                      device="cpu")
    model, result = run(tmp_path, cfg, val_batches=val_set(sign=-1.0),
                        val_metrics=lambda loss: {"val_rmse": math.sqrt(loss)})
    assert result.stopped_early and result.step < 200
    assert result.step == result.best_step + 2 * 5
    best = load_checkpoint(tmp_path / "ckpt" / "best.json")
    assert best["step"] == result.best_step
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    with open(tmp_path / "train_log.csv") as f:
        header = next(csv.reader(f))
    assert header == ["step", "lr", "loss", "val_loss", "val_rmse", "items_per_s", "elapsed_s"]
    # A rerun finds the finished checkpoint and trains no further.
    _, again = run(tmp_path, cfg, val_batches=val_set(sign=-1.0), val_metrics=lambda loss: {"val_rmse": loss})
    assert again.step == result.step and again.best_step == result.best_step


def test_no_validation_keeps_the_last_weights(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=4, eval_every=5, log_every=4, device="cpu")
    model, result = run(tmp_path, cfg, count_items=lambda batch: len(batch[0]))
    assert result.best_step is None and result.step == 12
    last = load_checkpoint(tmp_path / "ckpt" / "last.json")
    assert last["state"]["finished"] and last["data"]["step"] == 12
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())


def test_ctrl_c_checkpoints_the_current_step_then_resumes(tmp_path):
    cfg = TrainConfig(steps=20, batch_size=8, lr=0.01, warmup_steps=2, eval_every=10, log_every=5, device="cpu")
    reference, _ = run(tmp_path / "ref", cfg, val_batches=val_set())

    def ctrl_c(step, record):
        if step == 13:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C would

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", cfg, val_batches=val_set(), callbacks=[ctrl_c])
    assert load_checkpoint(tmp_path / "run" / "ckpt" / "last.json")["state"]["step"] == 13  # not 10: no work lost
    resumed, result = run(tmp_path / "run", cfg, val_batches=val_set())
    assert result.resumed_from == 13
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))


def test_monitor_max_keeps_the_weights_of_the_best_score(tmp_path):
    # A score that gets worse as training fits the data: the best weights are early ones.
    val_x, val_y = toy_batch(np.random.default_rng(7), 64, sign=-1.0)

    def score(model):
        return {"val_score": -nn.functional.mse_loss(model(val_x), val_y).item()}

    cfg = TrainConfig(steps=60, batch_size=8, lr=0.01, warmup_steps=0, eval_every=5, log_every=5)
    model, result = run(tmp_path, cfg, evaluate=score, monitor="val_score", mode="max")
    scores = {h["step"]: h["val_score"] for h in result.history}
    assert list(scores) == list(range(5, 61, 5)) and not result.stopped_early
    assert result.best_step == max(scores, key=scores.get) < 60
    assert result.best_value == max(scores.values()) and result.best_val_loss is None
    assert score(model)["val_score"] == result.best_value  # the model holds those weights
    with open(tmp_path / "train_log.csv") as f:
        header = next(csv.reader(f))
    assert header == ["step", "lr", "loss", "val_loss", "val_score", "items_per_s", "elapsed_s"]


def test_epoch_batches_visit_every_example_once_per_epoch():
    data = EpochBatches(10, 4, lambda rng, indices: indices, min_batch=3)
    assert data.steps_per_epoch == 2  # 4 + 4; the last 2 would be a batch below min_batch
    epoch1 = np.concatenate([data.indices(0, 0, s) for s in (1, 2)])
    epoch2 = np.concatenate([data.indices(0, 0, s) for s in (3, 4)])
    assert len(set(epoch1)) == 8 and not np.array_equal(epoch1, epoch2)
    # A pure function of (seed, rank, step), whatever was asked before.
    assert np.array_equal(EpochBatches(10, 4, None, min_batch=3).indices(0, 0, 4), data.indices(0, 0, 4))
    assert not np.array_equal(data.indices(1, 0, 4), data.indices(0, 0, 4))
    halves = [EpochBatches(10, 5, None, world_size=2).indices(0, rank, 1) for rank in (0, 1)]
    assert sorted(np.concatenate(halves)) == list(range(10))  # two ranks share one epoch


def test_epoch_style_training_resumes_exactly(tmp_path):
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((37, 3)).astype(np.float32))
    y = x @ W_TRUE.T
    data = EpochBatches(len(x), 8, lambda rng, indices: (x[indices], y[indices]))
    assert data.steps_per_epoch == 5  # 8 + 8 + 8 + 8 + 5
    cfg = TrainConfig.for_epochs(data, 4, lr=0.01, weight_decay=0.0, patience=2)
    assert (cfg.steps, cfg.eval_every, cfg.min_lr_ratio, cfg.grad_clip) == (20, 5, 1.0, 0.0)
    kw = dict(loss_fn=mse, train_batch=data, val_batches=val_set(), progress=False)
    reference = fresh_model()
    ref_result = train(reference, cfg, tmp_path / "ref", **kw)
    with pytest.raises(Crash):  # mid-epoch 3: the last checkpoint is the end of epoch 2
        train(fresh_model(), cfg, tmp_path / "resumed", callbacks=[crash_at(13)], **kw)
    resumed = fresh_model()
    result = train(resumed, cfg, tmp_path / "resumed", **kw)
    assert result.resumed_from == 10 and result.history == ref_result.history
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))
