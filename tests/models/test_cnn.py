"""CNN baselines: shapes, FLOPs (timbre << VGG), save/load, windows and a training smoke test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tokenlm.baselines.cnn import (
    ClassifierTraining, clip_windows, count_flops, count_parameters, embed_clips, load_model, predict_clips,
    random_crops, save_model, train_classifier,
)
from tokenlm.models.cnn import TimbreCNN, TimbreConfig, VGGConfig, VGGish
from tests.conftest import crash_and_resume, crash_at

# Tiny models: one torch thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("frames", [1, 7, 100])
def test_output_shapes_for_any_clip_length(frames):
    x = torch.randn(2, 1, 64, frames)  # (B, 1, F, T)
    vgg = VGGish(VGGConfig(n_mels=64, n_classes=5)).eval()
    timbre = TimbreCNN(TimbreConfig(n_mels=64, n_classes=5)).eval()
    assert vgg(x).shape == (2, 5) and vgg.embed(x).shape == (2, 256)
    assert timbre(x).shape == (2, 5) and timbre.embed(x).shape == (2, 32 * 6)


def test_timbre_filters_are_tall():
    config = TimbreConfig(n_mels=64, heights=(0.9, 0.5), widths=(1, 3))
    assert config.kernel_sizes == [(58, 1), (58, 3), (32, 1), (32, 3)]


def test_count_flops_matches_a_hand_count():
    model = nn.Sequential(nn.Conv2d(1, 4, (3, 3), padding=1), nn.Flatten(), nn.Linear(4 * 8 * 10, 7))
    model.embed = model.forward
    # conv: 4 channels x 8 x 10 outputs x 9 taps; linear: 320 x 7; 2 FLOPs per multiply-add.
    assert count_flops(model, (1, 8, 10)) == 2 * (4 * 8 * 10 * 9 + 320 * 7)


def test_timbre_costs_far_fewer_flops_and_parameters_than_vgg():
    one_second = (1, 64, 100)
    vgg = VGGish(VGGConfig(n_mels=64, n_classes=10))
    timbre = TimbreCNN(TimbreConfig(n_mels=64, n_classes=10))
    assert count_flops(timbre, one_second) * 10 < count_flops(vgg, one_second)
    assert count_parameters(timbre) * 10 < count_parameters(vgg)


def test_save_and_load_round_trip(tmp_path):
    model = TimbreCNN(TimbreConfig(n_mels=16, n_classes=3, filters=4)).eval()
    save_model(model, tmp_path, extra={"classes": ["a", "b", "c"]})
    loaded, record = load_model(tmp_path)
    x = torch.randn(2, 1, 16, 20)
    assert torch.equal(model(x), loaded(x))
    assert record["kind"] == "timbre" and record["classes"] == ["a", "b", "c"]


def test_windows_cover_the_whole_clip():
    clip = np.arange(25 * 2, dtype=np.float32).reshape(25, 2)  # (T, F)
    windows = clip_windows(clip, 10)  # (W, F, frames)
    assert windows.shape == (3, 2, 10)
    assert windows[-1, 0, -1] == clip[-1, 0]  # the last window ends on the last frame
    short = clip_windows(clip[:4], 10)
    assert short.shape == (1, 2, 10) and np.array_equal(short[0, :, 4:8], clip[:4].T)  # looped
    crops = random_crops([clip, clip[:3]], 10, np.random.default_rng(0))
    assert crops.shape == (2, 1, 2, 10)


def test_training_learns_a_separable_task_and_keeps_the_best_epoch():
    rng = np.random.default_rng(0)

    def clip(label):
        x = rng.standard_normal((int(rng.integers(20, 40)), 8)).astype(np.float32)
        x[:, 2 * label : 2 * label + 2] += 3
        return x

    labels = np.array([0, 1, 2] * 8)
    train = ([clip(c) for c in labels], labels)
    val = ([clip(c) for c in labels[:6]], labels[:6])
    torch.manual_seed(0)
    model = TimbreCNN(TimbreConfig(n_mels=8, n_classes=3, filters=8, heights=(1.0,), widths=(1,), dropout=0.0))
    config = ClassifierTraining(crop_frames=16, batch_size=8, epochs=12, patience=3, lr=1e-2)
    log = train_classifier(model, train, val, config, progress=False)
    assert log["best_val_accuracy"] == 1.0
    # Early stopping: `patience` epochs after the best one without improvement.
    assert log["epochs_run"] == min(log["best_epoch"] + config.patience, config.epochs)
    assert predict_clips(model, val[0], 16).argmax(1).tolist() == val[1].tolist()
    assert embed_clips(model, val[0], 16).shape == (6, 8)


def test_training_resumes_exactly_after_an_interruption(tmp_path, capsys):
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 10)
    clips = [rng.standard_normal((24, 8)).astype(np.float32) + label for label in labels]
    config = ClassifierTraining(crop_frames=16, batch_size=8, epochs=3, patience=3, lr=1e-2)  # 3 steps an epoch

    def fit(folder, callbacks=()):
        torch.manual_seed(0)
        model = VGGish(VGGConfig(n_mels=8, n_classes=2, channels=(4,), convs_per_block=1))
        log = train_classifier(model, (clips, labels), (clips[:6], labels[:6]), config, progress=False,
                               work_dir=folder, callbacks=callbacks)
        return model.state_dict(), {k: v for k, v in log.items() if k != "train_seconds"}

    (reference, ref_log), (resumed, log), err = crash_and_resume(fit, tmp_path, capsys, crash_at(5))
    assert "resuming from step 3" in err  # the end of epoch 1
    assert log == ref_log and [h["epoch"] for h in log["history"]] == [1, 2, 3]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)  # batch-norm statistics too
