"""Log-mel against librosa, the mel filterbank, batching, patches and running statistics."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from tokenlm.data.features import (
    FeatureConfig,
    LogMel,
    LogMelStream,
    RunningStats,
    file_log_mel,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    patchify,
    unpatchify,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CONFIGS = {
    "default 16k": FeatureConfig(),
    "22k f_max set": FeatureConfig(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=80,
                                   f_min=50.0, f_max=8000.0),
    "8k odd hop, low floor": FeatureConfig(sample_rate=8000, n_fft=256, hop_length=100, n_mels=40,
                                           f_min=20.0, f_max=3500.0, log_floor=1e-12),
}


def test_signal(sample_rate: int, seconds: float = 1.3, seed: int = 0) -> np.ndarray:
    """A chirp + noise with a stretch of digital silence, so the floor is reached too."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wav = 0.5 * np.sin(2 * np.pi * (200 * t + 1500 * t**2)) + 0.05 * rng.standard_normal(len(t))
    wav[: sample_rate // 5] = 0.0
    return wav.astype(np.float32)


test_signal.__test__ = False  # a helper, not a test


def librosa_log_mel(wav: np.ndarray, c: FeatureConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=wav, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels,
        fmin=c.f_min, fmax=c.f_max, center=True, pad_mode="constant", power=2.0,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=c.log_floor, top_db=None).T  # (frames, M)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_log_mel_matches_librosa(name):
    config = CONFIGS[name]
    wav = test_signal(config.sample_rate)
    ours = LogMel(config)(torch.from_numpy(wav)).numpy()
    ref = librosa_log_mel(wav, config)
    assert ours.shape == ref.shape == (config.num_frames(len(wav)), config.n_mels)
    floor_db = 10 * np.log10(config.log_floor)
    above = ref > floor_db + 1.0
    assert above.mean() > 0.5 and (~above).any()  # both regimes are exercised
    assert np.abs(ours - ref)[above].max() < 1e-3
    # at the floor both clamp to exactly the same value
    np.testing.assert_allclose(ours[~above], ref[~above], atol=1.0)
    assert ours.min() == pytest.approx(floor_db, abs=1e-3)


@pytest.mark.parametrize("sr,n_fft,n_mels,f_min,f_max", [
    (16000, 400, 64, 0.0, None),
    (22050, 1024, 80, 50.0, 8000.0),
    (44100, 2048, 128, 30.0, 16000.0),
    (8000, 256, 40, 0.0, 4000.0),
])
def test_mel_filterbank_matches_librosa_slaney(sr, n_fft, n_mels, f_min, f_max):
    ours = mel_filterbank(sr, n_fft, n_mels, f_min, f_max)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=False, norm="slaney")
    assert ours.shape == ref.shape == (n_mels, n_fft // 2 + 1)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


def test_mel_scale_matches_librosa_and_inverts():
    freqs = np.array([0.0, 50.0, 500.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0, 22050.0])
    np.testing.assert_allclose(hz_to_mel(freqs), librosa.hz_to_mel(freqs, htk=False), rtol=1e-10)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs)), freqs, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("num_samples", [400, 401, 559, 560, 16000, 16159])
def test_frame_count_is_centred_stft(num_samples):
    config = FeatureConfig()
    wav = torch.randn(num_samples)
    assert LogMel(config)(wav).shape == (config.num_frames(num_samples), 64)
    assert config.num_frames(num_samples) == 1 + num_samples // 160


def test_batched_equals_per_item():
    config = CONFIGS["22k f_max set"]
    log_mel = LogMel(config)
    batch = torch.stack([torch.from_numpy(test_signal(config.sample_rate, seed=s)) for s in range(3)])  # (3, T)
    batch[1] *= 0.01  # different levels
    together = log_mel(batch)  # (3, frames, M)
    assert together.shape == (3, config.num_frames(batch.shape[1]), config.n_mels)
    for i in range(3):
        np.testing.assert_allclose(together[i].numpy(), log_mel(batch[i]).numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("block", [1, 57, 256, 1000, 4099])
def test_streamed_log_mel_equals_the_one_shot_log_mel(name, block):
    """Any block size, even under one hop: the same frames as one call on the whole signal."""
    config = CONFIGS[name]
    wav = test_signal(config.sample_rate, seconds=0.4)
    log_mel = LogMel(config)
    stream = LogMelStream(log_mel)
    frames = [stream.push(wav[s:s + block]) for s in range(0, len(wav), block)] + [stream.finish()]
    streamed = np.concatenate(frames)
    whole = log_mel(torch.from_numpy(wav)).numpy()
    assert streamed.shape == whole.shape == (config.num_frames(len(wav)), config.n_mels)
    np.testing.assert_allclose(streamed, whole, atol=1e-3, rtol=0)


@pytest.mark.parametrize("seconds", [0.3, 2.0])
def test_file_log_mel_in_blocks_equals_the_one_shot_path(seconds, write_audio):
    """48 kHz stereo through the streaming resampler and log-mel, in 0.25 s blocks; a file of
    one block takes the one-shot path and is equal bit for bit."""
    config = FeatureConfig()
    wav = np.stack([test_signal(48000, seconds), test_signal(48000, seconds, seed=1)], axis=1)
    path = write_audio("stereo.wav", data=wav, sample_rate=48000, subtype="FLOAT")
    frames, num_samples = file_log_mel(path, LogMel(config), min_samples=400, block_seconds=0.25)
    from tokenlm.data.audio import load_audio

    samples = load_audio(path, config.sample_rate)
    whole = LogMel(config)(torch.from_numpy(samples)).numpy()
    assert num_samples == len(samples) and frames.shape == whole.shape
    if seconds <= 0.25:
        np.testing.assert_array_equal(frames, whole)
    else:
        np.testing.assert_allclose(frames, whole, atol=1e-3, rtol=0)


def test_log_mel_places_a_tone_in_the_right_bin():
    config = FeatureConfig()
    t = torch.arange(16000) / 16000
    frames = LogMel(config)(0.5 * torch.sin(2 * torch.pi * 1000 * t))
    fb = mel_filterbank(16000, 400, 64, 0.0, None)
    expected_bin = int(np.argmax(fb[:, round(1000 / 40)]))  # FFT bin of 1 kHz at 40 Hz spacing
    assert int(frames[50].argmax()) == expected_bin


def test_feature_config_rates_and_validation():
    config = FeatureConfig()
    assert config.frame_rate == 100 and config.code_rate == 20
    assert config.samples_per_code == 800 and config.patch_dim == 5 * 64
    overlapping = FeatureConfig(patch_hop=2)
    assert overlapping.code_rate == 50 and overlapping.samples_per_code == 320
    with pytest.raises(ValueError, match="f_max"):
        FeatureConfig(f_max=9000.0)  # above Nyquist at 16 kHz
    with pytest.raises(ValueError, match="f_max"):
        FeatureConfig(f_min=500.0, f_max=400.0)
    with pytest.raises(ValueError):
        FeatureConfig(patch_frames=0)


# ---- patches ------------------------------------------------------------------------------

def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # numpy's checker: torch.testing costs ~2 s of imports on first use
    np.testing.assert_array_equal(actual.numpy(), expected.numpy())


def test_patchify_shapes_and_frame_major_layout():
    frames = torch.arange(23 * 8, dtype=torch.float32).reshape(23, 8)  # (T, M)
    patches, padded = patchify(frames, 5)
    assert patches.shape == (4, 40) and not padded  # 23 // 5 whole patches, the rest dropped
    for i in range(4):
        assert_same(patches[i], frames[5 * i : 5 * i + 5].reshape(-1))


def test_patchify_with_overlap():
    frames = torch.randn(23, 8)
    patches, padded = patchify(frames, 5, patch_hop=2)
    assert patches.shape == (1 + (23 - 5) // 2, 40) and not padded
    assert_same(patches[3], frames[6:11].reshape(-1))


def test_clip_shorter_than_a_patch_is_padded_with_its_quietest_value_and_flagged():
    frames = torch.tensor([[1.0, -5.0], [-2.0, 3.0], [0.5, 0.0]])  # 3 frames < 5
    patches, padded = patchify(frames, 5)
    assert padded and patches.shape == (1, 10)
    rebuilt = patches.reshape(5, 2)
    assert_same(rebuilt[:3], frames)
    assert_same(rebuilt[3:], torch.tensor([[-2.0, -5.0], [-2.0, -5.0]]))


def test_exactly_one_patch_is_not_padded():
    patches, padded = patchify(torch.randn(5, 4), 5)
    assert patches.shape == (1, 20) and not padded


@pytest.mark.parametrize("n_frames", [20, 23])
def test_unpatchify_inverts_patchify(n_frames):
    frames = torch.randn(n_frames, 8)
    patches, _ = patchify(frames, 5)
    assert_same(unpatchify(patches, 8), frames[: 5 * (n_frames // 5)])


# ---- normalisation statistics -------------------------------------------------------------

def test_running_stats_equal_numpy_over_all_frames():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(-40.0 + 3 * i, 5.0 + i, size=(n, 6)).astype(np.float32) for i, n in enumerate([7, 1, 50, 13])]
    stats = RunningStats(6)
    for chunk in chunks:
        stats.update(chunk)
    result = stats.result()
    everything = np.concatenate(chunks).astype(np.float64)
    assert result["frames"] == len(everything)
    np.testing.assert_allclose(result["mean"], everything.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result["std"], everything.std(axis=0), rtol=1e-9)


def test_running_stats_precision_with_large_offset():
    # log-mel values sit around -100..0 dB with small spread: E[x^2] - E[x]^2 must not cancel
    x = -100.0 + 0.01 * np.random.default_rng(1).standard_normal((10000, 3))
    stats = RunningStats(3)
    stats.update(x)
    np.testing.assert_allclose(stats.result()["std"], x.std(axis=0), rtol=1e-4)


def test_running_stats_constant_bin_gets_a_std_floor_and_empty_is_an_error():
    stats = RunningStats(2)
    stats.update(np.array([[1.0, -100.0], [3.0, -100.0]]))
    result = stats.result()
    assert result["std"][0] == pytest.approx(1.0) and result["std"][1] > 0
    with pytest.raises(ValueError):
        RunningStats(2).result()
