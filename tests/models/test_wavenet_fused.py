"""The fused (numba) WaveNet step: equal to the torch incremental reference and to the full
forward pass, the same draws when sampling, and batches equal to clips generated one by one,
with code conditioning and with the decoded log-mel (conditioning that varies every sample)."""

import pytest
import torch

from tests.models.test_wavenet import SPC, random_inputs
from tokenlm.models.wavenet import WaveNet, WaveNetConfig
from tokenlm.models.wavenet.fused import FusedDecoder
from tokenlm.models.wavenet.incremental import GumbelSampler

pytest.importorskip("numba")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(conditioned: bool = True, mel: bool = False, **overrides) -> WaveNet:
    """2 cycles x 4 layers, 16 channels: receptive field 31 with kernel 2. ``mel``: conditioned
    on a random decoded log-mel too (2 frames of 5 bins per code)."""
    values = dict(layers_per_cycle=4, cycles=2, residual_channels=16, gate_channels=16, skip_channels=16,
                  cond_channels=8, codebook_size=10 if conditioned else 0, samples_per_code=SPC)
    if mel:
        values.update(mel_bins=5, frames_per_code=2)
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(**{**values, **overrides})).eval()
    if mel:
        model.set_code_mel(torch.randn(10, 2 * 5))
    return model


CONDITIONING = pytest.mark.parametrize("mel", [False, True], ids=["codes", "log-mel"])


def teacher_forced(decoder, inputs: torch.Tensor, start: int = 0) -> torch.Tensor:
    return torch.stack([decoder.step(inputs[:, t]) for t in range(start, inputs.shape[1])], dim=2)


@CONDITIONING
def test_fused_prime_then_step_matches_forward(mel):
    model = small_model(mel=mel)
    audio_q, codes = random_inputs(model, batch=2, n_codes=8)
    with torch.no_grad():
        full = model(audio_q, codes)
    for n_prompt in (5, 40):  # shorter and longer than the receptive field
        decoder = model.incremental(codes, batch_size=2, fused=True)
        assert isinstance(decoder, FusedDecoder)  # the compiled step, not a torch fallback
        decoder.prime(audio_q[:, :n_prompt])
        steps = teacher_forced(decoder, model.shift_right(audio_q), start=n_prompt)
        assert torch.allclose(steps, full[:, :, n_prompt:], atol=1e-5, rtol=0)


@CONDITIONING
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_fused_generation_draws_what_the_reference_draws(temperature, mel):
    model = small_model(mel=mel)
    _, codes = random_inputs(model, batch=2, n_codes=5)

    def run(fused, **kwargs):
        return model.generate(codes, temperature=temperature, generator=torch.Generator().manual_seed(3),
                              fused=fused, **kwargs)

    assert torch.equal(run(True), run(False))
    prompt = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(4))
    assert torch.equal(run(True, prompt_q=prompt), run(False, prompt_q=prompt))


def test_fused_run_across_block_and_noise_boundaries():
    """Blocks of 7 samples and noise drawn 5 steps at a time: the same as stepping one by one."""
    model = small_model(conditioned=False)
    prev = torch.full((2,), model.silence_class)

    def sampler():
        return GumbelSampler(1.0, torch.Generator().manual_seed(5), (2, 256), torch.device("cpu"), block=5)

    fused = model.incremental(batch_size=2, fused=True).run(prev, 40, sampler(), block=7)
    reference = model.incremental(batch_size=2).run(prev, 40, sampler())
    assert fused.shape == (2, 40) and torch.equal(fused, reference)


@CONDITIONING
def test_batch_generation_equals_generation_one_clip_at_a_time(mel):
    model = small_model(mel=mel)
    _, codes = random_inputs(model, batch=3, n_codes=5)
    batch = model.generate(codes, temperature=0, fused=True)
    one_by_one = torch.cat([model.generate(codes[i:i + 1], temperature=0, fused=True) for i in range(3)])
    assert torch.equal(batch, one_by_one)
    assert not torch.equal(batch[0], batch[1])  # different codes, different clips


@CONDITIONING
def test_fused_decoder_refuses_past_the_codes(mel):
    model = small_model(mel=mel)
    _, codes = random_inputs(model, batch=1, n_codes=2)
    decoder = model.incremental(codes, fused=True)
    prev = torch.full((1,), model.silence_class)
    decoder.run(prev, 2 * SPC, GumbelSampler(0.0, None, (1, 256), torch.device("cpu")))
    with pytest.raises(IndexError, match="past the end of the codes"):
        decoder.step(prev)
