"""SimCLR: the NT-Xent loss against a direct computation, augmentations, training that learns, and its resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import crash_and_resume, crash_at
from tokenlm.baselines.cnn import embed_clips
from tokenlm.baselines.simclr import AugmentConfig, SimCLRConfig, augment, nt_xent, train_simclr
from tokenlm.models.cnn import VGGConfig, VGGish
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


N_MELS = 16


def _clips(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """n log-mel clips (T, N_MELS) in dB, alternately a low and a high tone (a 2-band peak in
    the lower or the upper half of the bands), each at a random level within +-20 dB: a
    loudness spread that hides the pitch from random features, which the gain augmentation
    teaches the embedding to see past."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    clips = []
    for label in labels:
        x = -70 + 3 * rng.standard_normal((int(rng.integers(30, 50)), N_MELS))
        band = int(rng.integers(1, 6)) + 8 * label
        x[:, band:band + 2] += 30
        clips.append((x + rng.uniform(-20, 20)).astype(np.float16))
    return clips, labels


def _nearest_neighbour_accuracy(model, train, test, mean, std) -> float:
    """Held-out clips labelled by their nearest train clip (cosine) in the trunk's embedding."""
    def unit_embeddings(clips):
        e = embed_clips(model.trunk, [(c.astype(np.float32) - mean) / std for c in clips], 16)
        return e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-9)

    nearest = np.argmax(unit_embeddings(test[0]) @ unit_embeddings(train[0]).T, axis=1)
    return float(np.mean(train[1][nearest] == test[1]))


def test_training_lowers_the_loss_and_learns_to_tell_sounds_apart():
    train, test = _clips(48, seed=0), _clips(100, seed=1)
    frames = np.concatenate([c.astype(np.float64) for c in train[0]])
    mean, std = frames.mean(0).astype(np.float32), frames.std(0).astype(np.float32)
    # No mixing and narrower masks than the default, so that a few hundred steps learn; the
    # gain range matches the clips' loudness spread.
    augment_config = AugmentConfig(mix_prob=0.0, gain_db=20.0, time_mask_frac=0.1, freq_mask_frac=0.1)

    def trained(lr, epochs):
        torch.manual_seed(0)
        model = SimCLRModel(VGGish(VGGConfig(n_mels=N_MELS, channels=(8, 16), convs_per_block=1)), projection_dim=8)
        log = train_simclr(model, train[0], mean, std, SimCLRConfig(crop_frames=16, batch_size=16, epochs=epochs, lr=lr),
                           augment_config, progress=False)
        return model, [h["train_loss"] for h in log["history"]]

    model, losses = trained(3e-3, epochs=80)
    assert len(losses) == 80 and not model.training
    assert all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
    # The baseline: a run with a learning rate too small to move the weights. Batch norm's
    # running statistics adapt all the same (45 steps leave 1% of their initial values), so
    # the difference is what the weights learned.
    frozen, _ = trained(1e-12, epochs=15)
    before = _nearest_neighbour_accuracy(frozen, train, test, mean, std)
    after = _nearest_neighbour_accuracy(model, train, test, mean, std)
    assert after >= 0.8 and after >= before + 0.1, (before, after)


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

    (reference, ref_history), (resumed, history), err = crash_and_resume(fit, tmp_path, capsys, crash_at(5))
    assert "resuming from step 3" in err  # the end of epoch 1
    assert history == ref_history and len(history) == 2
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_near_views_start_within_the_offset_and_independent_views_are_the_reference():
    from tokenlm.baselines.cnn import random_crops
    from tokenlm.baselines.simclr import view_crops

    # Frame t of every clip holds the value t in every mel bin: a crop's first value is its start.
    clips = [np.repeat(np.arange(500, dtype=np.float32)[:, None], 4, axis=1) for _ in range(64)]
    a, b = view_crops(clips, 50, 10, np.random.default_rng(0))
    assert a.shape == b.shape == (64, 1, 4, 50)
    gaps = (a[:, 0, 0, 0] - b[:, 0, 0, 0]).abs()
    assert gaps.max() <= 10 and gaps.max() > 0
    # None: two independent random crops, drawn exactly as before the option existed.
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    first, second = view_crops(clips, 50, None, rng1)
    assert torch.equal(first, random_crops(clips, 50, rng2)) and torch.equal(second, random_crops(clips, 50, rng2))
    assert "view_offset_frames" not in SimCLRConfig().key()  # SimCLRs trained before keep their key
    assert SimCLRConfig(view_offset_frames=25).key()["view_offset_frames"] == 25


def test_frequency_bands_keep_where_in_frequency_a_pattern_sits():
    from tokenlm.models.simclr import FrequencyBands

    torch.manual_seed(0)
    trunk = VGGish(VGGConfig(n_mels=16, channels=(4, 8)))
    trunk.eval()
    bands = FrequencyBands(trunk)
    low, high = torch.zeros(1, 1, 16, 20), torch.zeros(1, 1, 16, 20)
    low[..., 2, :], high[..., 13, :] = 5.0, 5.0  # one tone, low or high
    with torch.no_grad():
        assert bands.embed(low).shape == (1, 8 * 4) and bands.embed_dim == 8 * 4
        # The same pattern in another band: the pooled embedding barely tells them apart, the
        # bands put it in another place of the vector.
        pooled_gap = (trunk.embed(low) - trunk.embed(high)).norm() / trunk.embed(low).norm()
        band_gap = (bands.embed(low) - bands.embed(high)).norm() / bands.embed(low).norm()
    assert band_gap > pooled_gap
