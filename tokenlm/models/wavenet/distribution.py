"""The WaveNet's output distributions over mu-law classes: a softmax, or a discretized logistic mixture.

- categorical (``WaveNetConfig.logistic_components == 0``): the output layer is one logit per
  class; the loss is cross-entropy. The original WaveNet's choice, and what the fused step runs.
- discretized logistic mixture (``logistic_components = M > 0``; PixelCNN++, Parallel WaveNet):
  the output layer is M mixture logits, M means and M log-scales of logistics on the amplitude
  axis [-1, 1]. Class c owns the amplitudes that mu-law rounds to it: on the companded axis
  the interval of half-width ``1 / (n - 1)`` around ``2c / (n - 1) - 1``, expanded (the end
  classes own the tails). A class's probability is the mixture's mass over its interval. Neighbouring amplitudes share their parameters, so the
  model does not have to learn 256 separate logits from a few minutes of audio: the point on
  a CPU budget. Training scores the target class only (O(M) a sample); sampling evaluates all
  n classes (``class_logits``) and draws with the same Gumbel sampler as the softmax, so
  temperature and seeds mean the same for both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["INITIAL_LOG_SCALE", "output_channels", "class_logits", "negative_log_likelihood", "MixtureOutput"]

INITIAL_LOG_SCALE = -3.0  # e^-3 ~ 1/20: about the level of a normalised excitation (tokenlm.vocoder.lpc.HEADROOM)
LOG_SCALE_MIN = -7.0  # scales below e^-7 (far narrower than a class) only make the loss unstable


def output_channels(n_classes: int, components: int) -> int:
    """Width of the output layer: one logit per class, or 3 numbers per mixture component."""
    return 3 * components if components else n_classes


def class_logits(output: Tensor, n_classes: int, components: int) -> Tensor:
    """Output layer (B, channels, ...) -> log-probabilities of every class (B, n_classes, ...)
    (the logits themselves for a softmax)."""
    if not components:
        return output
    centres = torch.linspace(-1.0, 1.0, n_classes, device=output.device, dtype=output.dtype)
    centres = centres.view(1, 1, n_classes, *([1] * (output.dim() - 2)))
    return _log_prob(output.unsqueeze(2), centres, n_classes, components)  # (B, n_classes, ...)


def negative_log_likelihood(output: Tensor, targets: Tensor, n_classes: int, components: int,
                            ignore_index: int = -100) -> Tensor:
    """Mean NLL in nats of the target classes (B, T) under the output layer (B, channels, T),
    leaving out targets equal to ``ignore_index``."""
    if not components:
        return F.cross_entropy(output.float(), targets, ignore_index=ignore_index)
    keep = targets != ignore_index
    x = (2.0 * targets.clamp_min(0).float() / (n_classes - 1) - 1.0).unsqueeze(1)  # (B, 1, T)
    log_p = _log_prob(output.float(), x, n_classes, components)  # (B, T)
    return -(log_p * keep).sum() / keep.sum().clamp_min(1)


def _log_prob(output: Tensor, x: Tensor, n_classes: int, components: int) -> Tensor:
    """log P(class at companded value x) under the mixture in ``output`` (channels on dim 1;
    x broadcasts against one component's parameters); the component dim is reduced away."""
    logit_pi, mean, log_scale = output.split(components, dim=1)
    log_scale = log_scale.clamp_min(LOG_SCALE_MIN)
    inv_scale = torch.exp(-log_scale)
    half = 1.0 / (n_classes - 1)
    # The class's interval in amplitude: the logistics live on the linear axis, where an
    # excitation is near a Laplacian around 0, not on the companded one, where it is two-humped.
    top, bottom = _expand(x + half, n_classes), _expand(x - half, n_classes)
    upper = inv_scale * (top - mean)
    lower = inv_scale * (bottom - mean)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid: the left tail for the first class
    log_sf_lower = -F.softplus(lower)  # log (1 - sigmoid): the right tail for the last class
    mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    # Where the interval's mass underflows float32, the density times the width stands in.
    centre = inv_scale * (_expand(x, n_classes) - mean)
    log_density = centre - log_scale - 2.0 * F.softplus(centre) + torch.log(top - bottom)
    log_mass = torch.where(mass > 1e-5, torch.log(mass.clamp_min(1e-12)), log_density)
    log_p = torch.where(x < -1.0 + half, log_cdf_upper, torch.where(x > 1.0 - half, log_sf_lower, log_mass))
    return torch.logsumexp(log_p + F.log_softmax(logit_pi, dim=1), dim=1)


def _expand(companded: Tensor, n_classes: int) -> Tensor:
    """Mu-law expansion of companded values (clamped to [-1, 1]) to amplitudes."""
    mu = n_classes - 1
    c = companded.clamp(-1.0, 1.0)
    return torch.sign(c) * torch.expm1(c.abs() * math.log1p(mu)) / mu


class MixtureOutput:
    """Mixin for an incremental decoder whose model has a mixture output: ``step`` returns
    class log-probabilities (B, n_classes), as the sampler expects, instead of the output layer."""

    @torch.no_grad()
    def step(self, prev_q: Tensor) -> Tensor:
        cfg = self.config
        return class_logits(super().step(prev_q), cfg.n_classes, cfg.logistic_components)
