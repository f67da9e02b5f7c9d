"""Reported numbers against answers known in advance: cases small enough to work out by hand,
so a metric in the wrong unit, swapped or scaled, fails here (scripts/mutants.py plants such
mistakes and checks that these tests catch each)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import sound
from tokenlm.data.features import FeatureConfig, LogMel
from tokenlm.evaluation.audio_quality import clip_distances
from tokenlm.evaluation.spectral import logmel_distance_db
from tokenlm.pipeline.rawlm import scores
from tokenlm.tokenizer.codebook import label_code_agreement
from tokenlm.vocoder.griffin_lim import griffin_lim_from_log_mel, griffin_lim_missing

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 8000
FEATURES = FeatureConfig(sample_rate=SR, n_fft=200, hop_length=80, n_mels=16, patch_frames=2)


class HalfSure(torch.nn.Module):
    """A 'model' of 8-bit samples that gives the true sample probability 1/2 and spreads the
    rest evenly: exactly 1 bit per sample, and the true sample is always its first guess."""

    def forward(self, audio):  # (B, T) -> logits (B, 256, T)
        p = torch.full((*audio.shape, 256), 0.5 / 255)
        p.scatter_(-1, audio[..., None], 0.5)
        return p.log().permute(0, 2, 1)


def test_bits_per_sample_are_bits():
    batches = [(torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(s)), None) for s in range(3)]
    result = scores(HalfSure(), batches, "cpu")
    assert result["bits_per_sample"] == pytest.approx(1.0, abs=1e-4)  # nats would be ln 2 = 0.693
    assert result["top1"] == 1.0 and result["top5"] == 1.0
    assert result["samples"] == 3 * 2 * 8  # the scored last half of each window


def test_purity_and_pnmi_on_a_case_worked_out_by_hand():
    # codes 0 0 1 2 over labels a a a b: each code has one label (purity 1), label a is spread
    # over two codes (cluster purity 1/2 + 1/4), and the codes tell the label exactly (PNMI 1)
    exact = label_code_agreement(np.array([0, 0, 1, 2]), np.array(["a", "a", "a", "b"]), k=3)
    assert exact == pytest.approx({"purity": 1.0, "cluster_purity": 0.75, "pnmi": 1.0})
    # codes 0 0 0 1 over labels a a b b: p(a, 0) = 1/2, p(b, 0) = 1/4, p(b, 1) = 1/4
    mixed = label_code_agreement(np.array([0, 0, 0, 1]), np.array(["a", "a", "b", "b"]), k=2)
    mutual = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.25 * 0.5))
    assert mixed["pnmi"] == pytest.approx(mutual / math.log(2))  # about 0.311
    assert mixed["purity"] == pytest.approx(0.5 + 0.25) and mixed["cluster_purity"] == pytest.approx(0.5 + 0.25)


@pytest.mark.skipif(griffin_lim_missing() is not None, reason="librosa not installed")
def test_griffin_lim_inverts_a_log_mel_it_was_given():
    """Broadband noise has no silent mel bin, so its log-mel pins the magnitudes down: the
    reconstruction lands within a decibel (0.55 dB measured); a flat spectrum misses by 2+."""
    log_mel = LogMel(FEATURES)
    x = sound("noise", 0.5, SR, 0)
    ref = log_mel(torch.from_numpy(x))
    y = griffin_lim_from_log_mel(ref.numpy(), FEATURES, len(x), n_iter=32, seed=0)
    assert len(y) == len(x)
    assert logmel_distance_db(ref, log_mel(torch.from_numpy(y))[:len(ref)]) < 1.0


def test_decoder_distances_against_known_answers():
    """A vocoder that returns the input exactly is 0 on every distance; one that returns it at
    half the amplitude is off by 20 log10(2) = 6.02 dB in every mel bin of a loud broadband
    signal; 8-bit mu-law of the input sits between the two."""
    from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
    from tokenlm.tokenizer.tokenizer import AudioTokenizer, PatchCoder

    torch.manual_seed(0)
    coder = PatchCoder(FEATURES, np.full(16, -40.0), np.full(16, 10.0),
                       PatchAutoencoder(FEATURES.patch_dim, AutoencoderConfig(hidden=(16, 8), bottleneck=4)))
    tokenizer = AudioTokenizer(coder, np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32))
    x = np.random.default_rng(3).uniform(-0.5, 0.5, 10 * 160).astype(np.float32)  # white: no quiet bin
    codes = np.zeros(10, np.int64)
    same = clip_distances(tokenizer, x, codes, x.copy())
    assert same["vocoder_logmel_db"] == 0 and same["vocoder_lsd_db"] == 0 and same["vocoder_mrstft"] == 0
    half = clip_distances(tokenizer, x, codes, 0.5 * x)
    assert half["vocoder_logmel_db"] == pytest.approx(20 * math.log10(2), abs=0.01)
    assert half["vocoder_lsd_db"] == pytest.approx(20 * math.log10(2), abs=0.01)
    assert 0 < half["mulaw_logmel_db"] < half["vocoder_logmel_db"]
