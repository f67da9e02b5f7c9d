"""The output distributions (distribution.py): a discretized logistic mixture is a proper
distribution over the mu-law classes, its loss scores what sampling draws from, and its
incremental decoders (torch only) equal the full forward pass."""

import pytest
import torch
import torch.nn.functional as F

from tokenlm.models.wavenet import WaveNet, WaveNetConfig
from tokenlm.models.wavenet.distribution import class_logits, negative_log_likelihood

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K, SPC = 5, 8


def mixture_model(mel: bool, components: int = 3, seed: int = 0) -> WaveNet:
    values = dict(layers_per_cycle=3, cycles=2, residual_channels=8, gate_channels=8, skip_channels=8,
                  cond_channels=8, codebook_size=K, samples_per_code=SPC, logistic_components=components,
                  mel_bins=4 if mel else 0, frames_per_code=2)
    torch.manual_seed(seed)
    model = WaveNet(WaveNetConfig(**values)).eval()
    if mel:
        model.set_code_mel(torch.randn(K, 2 * 4))
    return model


def test_the_mixture_is_a_distribution_over_the_classes_and_the_loss_scores_it():
    gen = torch.Generator().manual_seed(0)
    output = torch.randn(2, 3 * 4, 7, generator=gen) * 2  # 4 components, some scales far below a class
    log_p = class_logits(output, 256, 4)
    assert log_p.shape == (2, 256, 7)
    assert torch.allclose(log_p.logsumexp(dim=1), torch.zeros(2, 7), atol=1e-4)
    targets = torch.randint(0, 256, (2, 7), generator=gen)
    targets[0, :3] = torch.tensor([0, 255, -100])  # both tails, and one left out
    expected = F.nll_loss(log_p, targets, ignore_index=-100)
    assert torch.allclose(negative_log_likelihood(output, targets, 256, 4), expected, atol=1e-4)
    logits = torch.randn(2, 256, 7, generator=gen)  # 0 components: the softmax as it was
    assert torch.equal(class_logits(logits, 256, 0), logits)
    assert torch.allclose(negative_log_likelihood(logits, targets, 256, 0),
                          F.cross_entropy(logits, targets, ignore_index=-100))
    with pytest.raises(ValueError, match="logistic_components"):
        WaveNetConfig(logistic_components=-1)


@pytest.mark.parametrize("mel", [False, True], ids=["codes", "log-mel"])
def test_mixture_decoders_match_the_forward_pass_and_the_naive_sampler(mel):
    model = mixture_model(mel)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, K, (2, 6), generator=gen)  # 48 samples > receptive field 15
    audio_q = torch.randint(0, 256, (2, 6 * SPC), generator=gen)
    with torch.no_grad():
        full = model.class_logits(model(audio_q, codes))  # (B, n_classes, T)
    decoder = model.incremental(codes, fused=True)  # falls back to the torch decoder
    inputs = model.shift_right(audio_q)
    steps = torch.stack([decoder.step(inputs[:, t]) for t in range(audio_q.shape[1])], dim=2)
    # Compared as probabilities: a narrow logistic's log-mass magnifies float32 rounding in its mean.
    assert torch.allclose(steps.exp(), full.exp(), atol=1e-5, rtol=0), (steps.exp() - full.exp()).abs().max()
    fast = model.generate(codes[:, :3], generator=torch.Generator().manual_seed(5))
    slow = model.generate_naive(codes[:, :3], generator=torch.Generator().manual_seed(5))
    assert fast.shape == (2, 3 * SPC) and torch.equal(fast, slow)
