"""SimCLR: the NT-Xent loss against a direct computation, augmentations, training and its resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenlm.models.cnn import VGGConfig, VGGish
from tokenlm.baselines.simclr import AugmentConfig, SimCLRConfig, augment, nt_xent, train_simclr
from tokenlm.models.simclr import SimCLRModel

# Tiny models: one torch thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _nt_xent_by_hand(z1, z2, temperature):
    """Chen et al.'s definition, one term at a time."""
    views = [v / v.norm() for v in list(z1) + list(z2)]
    n, batch = len(views), len(z1)
    total = 0.0
    for i in range(n):
        positive = (i + batch) % n
        sims = {j: float(views[i] @ views[j]) / temperature for j in range(n) if j != i}
        total += -math.log(math.exp(sims[positive]) / sum(math.exp(s) for s in sims.values()))
    return total / n


def test_nt_xent_matches_a_direct_computation():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    for temperature in (0.1, 0.5, 1.0):
        assert nt_xent(z1, z2, temperature).item() == pytest.approx(_nt_xent_by_hand(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_low_when_views_agree():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.1) < nt_xent(z, torch.randn(8, 16), 0.1)


def test_augment_shapes_determinism_and_masks():
    crops = -50 + 10 * torch.randn(4, 1, 16, 30)  # (B, 1, F, T) dB
    mean, std = torch.full((16,), -50.0), torch.full((16,), 10.0)
    config = AugmentConfig(mix_prob=1.0, noise_prob=1.0, time_mask_frac=0.5, freq_mask_frac=0.5)
    a = augment(crops, mean, std, config, torch.Generator().manual_seed(0))
    b = augment(crops, mean, std, config, torch.Generator().manual_seed(0))
    assert a.shape == crops.shape and torch.equal(a, b) and torch.isfinite(a).all()
    # With everything off but the gain, a view is the normalised crop shifted by one constant per clip.
    plain = AugmentConfig(mix_prob=0, noise_prob=0, gain_db=0, time_mask_frac=0, freq_mask_frac=0)
    assert torch.allclose(augment(crops, mean, std, plain, torch.Generator()), (crops + 50) / 10, atol=1e-5)
    # Mixing adds power, so it never makes a bin quieter.
    mixed = augment(crops, mean, std, AugmentConfig(mix_prob=1, noise_prob=0, gain_db=0, time_mask_frac=0,
                                                    freq_mask_frac=0), torch.Generator().manual_seed(1))
    assert (mixed >= (crops + 50) / 10 - 1e-5).all()


def test_training_runs_and_lowers_the_loss():
    rng = np.random.default_rng(0)
    clips = [(-50 + 10 * rng.standard_normal((int(rng.integers(20, 40)), 8))).astype(np.float16) for _ in range(16)]
    torch.manual_seed(0)
    model = SimCLRModel(VGGish(VGGConfig(n_mels=8, channels=(4, 8), convs_per_block=1)), projection_dim=8)
    log = train_simclr(model, clips, np.full(8, -50.0), np.full(8, 10.0),
                       SimCLRConfig(crop_frames=16, batch_size=8, epochs=4, lr=3e-3), progress=False)
    assert log["epochs_run"] == 4
    assert all(math.isfinite(h["train_loss"]) for h in log["history"])
    assert not model.training


class Crash(Exception):
    pass


def test_training_resumes_exactly_after_an_interruption(tmp_path, capsys):
    rng = np.random.default_rng(0)
    clips = [(-50 + 10 * rng.standard_normal((30, 8))).astype(np.float16) for _ in range(12)]
    config = SimCLRConfig(crop_frames=16, batch_size=4, epochs=2, lr=3e-3, projection_dim=4)  # 3 steps an epoch

    def fit(folder, callbacks=()):
        torch.manual_seed(0)
        model = SimCLRModel(VGGish(VGGConfig(n_mels=8, channels=(4,), convs_per_block=1)), config.projection_dim)
        log = train_simclr(model, clips, np.full(8, -50.0), np.full(8, 10.0), config, progress=False,
                           work_dir=folder, callbacks=callbacks)
        return model.state_dict(), log["history"]

    def crash_at_step_5(step, record):
        if step == 5:
            raise Crash

    reference, ref_history = fit(tmp_path / "ref")
    with pytest.raises(Crash):
        fit(tmp_path / "resumed", [crash_at_step_5])
    capsys.readouterr()
    resumed, history = fit(tmp_path / "resumed")
    assert "resuming from step 3" in capsys.readouterr().err  # the end of epoch 1
    assert history == ref_history and len(history) == 2
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
