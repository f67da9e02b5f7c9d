"""WaveNet decoder: the incremental generator must agree with the full forward pass.

Small configs only (2 cycles x 4 layers, 16 channels): the whole file runs in seconds on CPU.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tokenlm.core.errors import ConfigError
from tokenlm.models.wavenet import WaveNet, WaveNetConfig, mu_law_decode, mu_law_encode

SPC = 8  # samples per code in the small configs: several codes fit in a short clip


# Tiny ops: intra-op threads only add synchronisation (shared fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(conditioned: bool = True, **overrides) -> WaveNetConfig:
    """2 cycles x 4 layers, receptive field 31 with kernel 2."""
    values = dict(layers_per_cycle=4, cycles=2, residual_channels=16, gate_channels=16, skip_channels=16,
                  cond_channels=8, codebook_size=10 if conditioned else 0, samples_per_code=SPC)
    values.update(overrides)
    return WaveNetConfig(**values)


def small_model(conditioned: bool = True, seed: int = 0, **overrides) -> WaveNet:
    torch.manual_seed(seed)
    return WaveNet(small_config(conditioned, **overrides)).eval()


def random_inputs(model: WaveNet, batch: int, n_codes: int, seed: int = 1):
    """Random (audio_q (B, T), codes (B, N) or None) with T = N * samples_per_code."""
    gen = torch.Generator().manual_seed(seed)
    audio_q = torch.randint(0, model.config.n_classes, (batch, n_codes * SPC), generator=gen)
    codes = None
    if model.config.conditioned:
        codes = torch.randint(0, model.config.codebook_size, (batch, n_codes), generator=gen)
    return audio_q, codes


# --------------------------------------------------------------------------- mu-law


def test_mu_law_round_trip_error_bound():
    x = torch.linspace(-1.0, 1.0, 20001)
    err = (mu_law_decode(mu_law_encode(x)) - x).abs()
    # Companded values move by at most half a step (1/mu), so |x| + 1/mu grows by at most a
    # factor (1+mu)^(1/mu): the error is relative, tiny near silence and ~2% at full scale.
    mu = 255
    bound = (x.abs() + 1 / mu) * ((1 + mu) ** (1 / mu) - 1) + 1e-6
    assert bool((err <= bound).all())
    assert err[x.abs() < 0.01].max() < 3e-4


def test_mu_law_classes_are_stable_and_in_range():
    q = torch.arange(256)
    assert torch.equal(mu_law_encode(mu_law_decode(q)), q)
    assert int(mu_law_encode(torch.tensor(0.0))) == 128
    loud = mu_law_encode(torch.tensor([-3.0, 3.0]))  # clipped
    assert loud.tolist() == [0, 255]
    assert mu_law_encode(torch.zeros(3)).dtype == torch.long


# --------------------------------------------------------------------------- config


def test_config_round_trip_and_receptive_field():
    config = WaveNetConfig()
    assert config.receptive_field == 2047  # 2 cycles of dilations 1..512, kernel 2
    assert WaveNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert small_config(kernel_size=3).receptive_field == 2 * 2 * 15 + 1
    with pytest.raises(ConfigError, match="unknown option"):
        WaveNetConfig.from_dict({**config.to_dict(), "hop": 160})
    with pytest.raises(ValueError, match="gate_channels"):
        WaveNetConfig(gate_channels=15)


# --------------------------------------------------------------------------- conditioning


def test_upsampled_conditioning_has_exact_length():
    model = small_model()
    for n_codes in (1, 3, 7):
        codes = torch.randint(0, 10, (2, n_codes))
        assert model.upsample_conditioning(codes).shape == (2, 8, n_codes * SPC)


def test_audio_code_length_mismatch_raises():
    model = small_model()
    audio_q, codes = random_inputs(model, batch=2, n_codes=4)
    assert model(audio_q, codes).shape == (2, 256, 4 * SPC)
    with pytest.raises(ValueError, match="4 codes x 8 samples_per_code = 32"):
        model(audio_q[:, :-1], codes)
    with pytest.raises(ValueError, match="codes must lie in"):
        model(audio_q, codes + 10)
    with pytest.raises(ValueError, match="pass codes"):
        model(audio_q)


def test_conditioning_changes_the_output():
    model = small_model()
    audio_q, codes = random_inputs(model, batch=1, n_codes=4)
    assert not torch.allclose(model(audio_q, codes), model(audio_q, (codes + 1) % 10))


# --------------------------------------------------------------------------- incremental == full


@pytest.mark.parametrize("conditioning", ["codes", "no-codes", "log-mel"])
@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
def test_incremental_step_matches_forward(conditioning, kernel_size, fused):
    """The torch decoders and the compiled ones (fused.py) all equal the full forward pass,
    with conditioning constant inside a code (codes) and varying every sample (log-mel)."""
    if fused:
        pytest.importorskip("numba")
    if conditioning == "log-mel":  # 2 frames of 4 samples per code
        model = small_model(kernel_size=kernel_size, mel_bins=5, frames_per_code=2)
        model.set_code_mel(torch.randn(10, 2 * 5, generator=torch.Generator().manual_seed(2)))
    else:
        model = small_model(conditioning == "codes", kernel_size=kernel_size)
    # 6 codes = 48 samples > receptive field (31 or 61 with kernel 3): the rings wrap around.
    audio_q, codes = random_inputs(model, batch=3, n_codes=6 if kernel_size == 2 else 9)
    with torch.no_grad():
        full = model(audio_q, codes)  # (B, n_classes, T)
    decoder = model.incremental(codes, batch_size=3, fused=fused)
    inputs = model.shift_right(audio_q)  # (B, T): x[t-1], silence first
    steps = torch.stack([decoder.step(inputs[:, t]) for t in range(audio_q.shape[1])], dim=2)
    assert torch.allclose(steps, full, atol=1e-5, rtol=0), (steps - full).abs().max()


@pytest.mark.parametrize("conditioned", [True, False], ids=["codes", "no-codes"])
def test_prime_then_step_matches_forward(conditioned):
    model = small_model(conditioned)
    audio_q, codes = random_inputs(model, batch=2, n_codes=8)
    with torch.no_grad():
        full = model(audio_q, codes)
    for n_prompt in (5, 40):  # shorter and longer than the receptive field
        decoder = model.incremental(codes, batch_size=2)
        decoder.prime(audio_q[:, :n_prompt])
        steps = [decoder.step(audio_q[:, t - 1]) for t in range(n_prompt, audio_q.shape[1])]
        assert torch.allclose(torch.stack(steps, dim=2), full[:, :, n_prompt:], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- generation


def test_generate_is_seeded_and_matches_naive():
    model = small_model()
    _, codes = random_inputs(model, batch=2, n_codes=5)

    def run(method, seed, **kwargs):
        return method(codes, generator=torch.Generator().manual_seed(seed), **kwargs)

    audio = run(model.generate, 3)
    assert audio.shape == (2, 5 * SPC) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1.0
    assert torch.equal(audio, run(model.generate, 3))
    assert not torch.equal(audio, run(model.generate, 4))
    assert torch.equal(audio, run(model.generate_naive, 3))
    prompt = mu_law_encode(audio[:, :13])
    assert torch.equal(run(model.generate, 5, prompt_q=prompt), run(model.generate_naive, 5, prompt_q=prompt))


def test_generate_unconditioned_batch_and_greedy():
    model = small_model(conditioned=False)
    audio = model.generate(n_samples=20, batch_size=3, temperature=0)
    assert audio.shape == (3, 20)
    assert torch.equal(audio[0], audio[1])  # greedy and no conditioning: identical clips
    with pytest.raises(ValueError, match="needs n_samples"):
        model.generate()


def test_tiny_model_overfits_a_sine_and_generates_it():
    torch.manual_seed(0)
    model = WaveNet(small_config(residual_channels=32, gate_channels=32, skip_channels=32))
    n_codes = 32
    t = torch.arange(n_codes * SPC, dtype=torch.float32)
    audio_q = mu_law_encode(0.6 * torch.sin(2 * math.pi * t / 20)).unsqueeze(0)  # (1, 256)
    codes = (torch.arange(n_codes) % 10).unsqueeze(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = F.cross_entropy(model(audio_q, codes), audio_q)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[0] > 5.0  # ~ln 256 at init
    assert losses[-1] < 0.1 * losses[0], losses[::20]
    # Training and generation share the same shift convention: greedy decoding replays the clip.
    generated = model.eval().generate(codes, temperature=0)  # (1, 256)
    error = (generated - mu_law_decode(audio_q)).abs().mean().item()
    assert error < 0.05, error
