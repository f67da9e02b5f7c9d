"""Decoder quality measures: the MR-STFT distance, the Griffin-Lim reference decoder (no
training) and the side-by-side table, on tiny signals and a tiny untrained tokenizer."""

import numpy as np
import pytest
import torch

from tests.conftest import sound
from tokenlm.data.features import FeatureConfig
from tokenlm.evaluation.audio_quality import clip_distances, decoder_table
from tokenlm.evaluation.spectral import logmel_distance_db, mr_stft_distance, stoi, stoi_missing
from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
from tokenlm.tokenizer.tokenizer import AudioTokenizer, PatchCoder
from tokenlm.vocoder.griffin_lim import griffin_lim_from_codes, griffin_lim_missing

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 8000
FEATURES = FeatureConfig(sample_rate=SR, n_fft=200, hop_length=80, n_mels=16, patch_frames=2)  # 160 samples a code


@pytest.fixture(scope="module")
def tokenizer() -> AudioTokenizer:
    """An untrained tokenizer with K=4: its decoded log-mel is some spectrum, which is all
    the reference decoder needs."""
    torch.manual_seed(0)
    coder = PatchCoder(FEATURES, np.full(16, -40.0), np.full(16, 10.0),
                       PatchAutoencoder(FEATURES.patch_dim, AutoencoderConfig(hidden=(16, 8), bottleneck=4)))
    return AudioTokenizer(coder, np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32))


def test_mr_stft_is_zero_for_identical_signals_and_grows_with_noise():
    x = sound("chirp", 0.5, SR, 0)
    assert mr_stft_distance(x, x) == 0
    rng = np.random.default_rng(1)
    noise = rng.normal(size=len(x)).astype(np.float32)
    distances = [mr_stft_distance(x, x + level * noise) for level in (0.001, 0.01, 0.1)]
    assert 0 < distances[0] < distances[1] < distances[2]
    with pytest.raises(ValueError, match="different lengths"):
        mr_stft_distance(x, x[:-1])


@pytest.mark.skipif(griffin_lim_missing() is not None, reason="librosa not installed")
def test_griffin_lim_reference_has_the_codes_length_and_a_finite_distance(tokenizer):
    codes = np.array([0, 3, 1, 2, 2])
    audio = griffin_lim_from_codes(tokenizer, codes, n_iter=4, seed=0)
    assert audio.shape == (5 * 160,) and audio.dtype == np.float32 and np.isfinite(audio).all()
    assert np.array_equal(audio, griffin_lim_from_codes(tokenizer, codes, n_iter=4, seed=0))  # seeded
    original = sound("tone", 5 * 160 / SR, SR, 0)
    log_mel = tokenizer.coder.log_mel
    distance = logmel_distance_db(log_mel(torch.from_numpy(original))[:10], log_mel(torch.from_numpy(audio))[:10])
    assert np.isfinite(distance) and distance > 0
    assert griffin_lim_from_codes(tokenizer, np.zeros(0, np.int64)).shape == (0,)


def test_the_decoders_side_by_side(tokenizer):
    codes = np.array([1, 2, 0])
    original = sound("noise", 3 * 160 / SR, SR, 2)
    resynth = sound("noise", 3 * 160 / SR, SR, 3)
    reference = None if griffin_lim_missing() else griffin_lim_from_codes(tokenizer, codes, n_iter=4)
    row = clip_distances(tokenizer, original, codes, resynth, griffin_lim=reference)
    for key in ("vocoder_logmel_db", "vocoder_lsd_db", "vocoder_mrstft", "mulaw_mrstft", "codebook_logmel_db"):
        assert np.isfinite(row[key]), key
    assert row["mulaw_mrstft"] < row["vocoder_mrstft"]  # 8-bit mu-law of the input is near it
    assert ("griffinlim_mrstft" in row) == (reference is not None)
    assert ("vocoder_stoi" in row) == (stoi_missing() is None)
    table = decoder_table(row)
    assert table[0].startswith("| decoder | log-mel dB")
    assert any(line.startswith("| WaveNet from the codes |") for line in table)
    assert any(line.startswith("| codes' log-mel") and "n/a" in line for line in table)  # log-mel only


@pytest.mark.skipif(stoi_missing() is None, reason="pystoi installed")
def test_stoi_without_pystoi_is_none_with_a_reason():
    x = sound("tone", 0.5, SR, 0)
    assert stoi(x, x, SR) is None and "pystoi" in stoi_missing()
