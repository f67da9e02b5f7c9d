"""The WaveNet conditioned on the codes' decoded log-mel: exact lengths, and the incremental
decoder (a per-sample conditioning lookup) agreeing with the full forward pass."""

import numpy as np
import pytest
import torch

from tokenlm.models.wavenet import WaveNet, WaveNetConfig, de_emphasis, pre_emphasis

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K, SPC, FRAMES, MELS = 6, 12, 3, 5  # 3 log-mel frames of 4 samples per code


def mel_model(seed: int = 0, **overrides) -> WaveNet:
    values = dict(layers_per_cycle=3, cycles=2, residual_channels=8, gate_channels=8, skip_channels=8,
                  cond_channels=8, codebook_size=K, samples_per_code=SPC, mel_bins=MELS, frames_per_code=FRAMES)
    torch.manual_seed(seed)
    model = WaveNet(WaveNetConfig(**{**values, **overrides})).eval()
    model.set_code_mel(torch.randn(K, FRAMES * MELS))
    return model


@pytest.mark.parametrize("spc", [SPC, 13], ids=["whole-frames", "frames-not-dividing"])
def test_decoded_log_mel_and_codes_upsample_to_exact_length(spc):
    model = mel_model(samples_per_code=spc)
    for n_codes in (1, 2, 7):
        codes = torch.randint(0, K, (2, n_codes))
        assert model.upsample_conditioning(codes).shape == (2, 8, n_codes * spc)
        assert model(torch.randint(0, 256, (2, n_codes * spc)), codes).shape == (2, 256, n_codes * spc)


def test_the_log_mel_table_conditions_and_is_checked():
    model = mel_model()
    codes = torch.randint(0, K, (1, 4))
    audio_q = torch.randint(0, 256, (1, 4 * SPC))
    before = model(audio_q, codes)
    model.set_code_mel(torch.randn(K, FRAMES * MELS))
    assert not torch.allclose(before, model(audio_q, codes))
    assert "code_mel" in model.state_dict()  # saved with the weights
    with pytest.raises(ValueError, match="code_mel table must be"):
        model.set_code_mel(torch.zeros(K, MELS))
    with pytest.raises(ValueError, match="needs codes"):
        WaveNetConfig(codebook_size=0, mel_bins=4)


def test_incremental_steps_match_the_forward_pass_with_log_mel():
    model = mel_model()
    codes = torch.randint(0, K, (3, 6), generator=torch.Generator().manual_seed(1))
    audio_q = torch.randint(0, 256, (3, 6 * SPC), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(audio_q, codes)
    decoder = model.incremental(codes)
    inputs = model.shift_right(audio_q)
    steps = torch.stack([decoder.step(inputs[:, t]) for t in range(audio_q.shape[1])], dim=2)
    assert torch.allclose(steps, full, atol=1e-5, rtol=0), (steps - full).abs().max()


def test_generate_matches_naive_and_primes_with_log_mel():
    model = mel_model()
    codes = torch.randint(0, K, (2, 3))
    fast = model.generate(codes, generator=torch.Generator().manual_seed(5))
    slow = model.generate_naive(codes, generator=torch.Generator().manual_seed(5))
    assert fast.shape == (2, 3 * SPC) and torch.equal(fast, slow)
    prompt = torch.randint(0, 256, (2, 10))
    primed = model.generate(codes, generator=torch.Generator().manual_seed(5), prompt_q=prompt)
    naive = model.generate_naive(codes, generator=torch.Generator().manual_seed(5), prompt_q=prompt)
    assert torch.equal(primed, naive)


def test_pre_emphasis_round_trips():
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 300)).astype(np.float32)
    y = pre_emphasis(x, 0.85)
    assert np.allclose(y[:, 1:], x[:, 1:] - 0.85 * x[:, :-1])
    assert np.allclose(de_emphasis(y, 0.85), x, atol=1e-5)
    assert np.array_equal(pre_emphasis(x, 0.0), x) and np.array_equal(de_emphasis(x, 0.0), x)
    with pytest.raises(ValueError, match="pre_emphasis"):
        WaveNetConfig(pre_emphasis=1.0)
