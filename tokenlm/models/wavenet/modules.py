"""WaveNet building blocks: 8-bit mu-law companding and the gated residual layer."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # annotation only: model.py imports this module
    from tokenlm.models.wavenet.config import WaveNetConfig

__all__ = ["mu_law_encode", "mu_law_decode", "pre_emphasis", "de_emphasis", "ResidualLayer"]


def mu_law_encode(x: Tensor, n: int = 256) -> Tensor:
    """Quantize float audio in [-1, 1] to ``n`` mu-law classes (LongTensor in [0, n-1]).

    Values outside [-1, 1] are clipped. Silence (0.0) maps to class ``n // 2``.
    """
    mu = n - 1
    x = x.clamp(-1.0, 1.0)
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)  # in [-1, 1]
    # floor(v + 0.5) rather than round(): torch.round rounds halves to even, which would make
    # the class boundaries depend on parity.
    return torch.floor((companded + 1.0) / 2.0 * mu + 0.5).long()


def mu_law_decode(q: Tensor, n: int = 256) -> Tensor:
    """Map mu-law classes in [0, n-1] back to float audio in [-1, 1]."""
    mu = n - 1
    companded = 2.0 * q.float() / mu - 1.0
    return torch.sign(companded) * torch.expm1(companded.abs() * math.log1p(mu)) / mu


def pre_emphasis(x, coefficient: float):
    """``y[t] = x[t] - a x[t-1]`` along the last axis (numpy): tilts the spectrum up, so that
    the noise of a sampled 8-bit model, white in the emphasised domain, comes out low-passed
    under the signal after ``de_emphasis`` (LPCNet's noise shaping)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    if not coefficient:
        return x
    y = x.copy()
    y[..., 1:] -= np.float32(coefficient) * x[..., :-1]
    return y


def de_emphasis(y, coefficient: float):
    """The inverse of ``pre_emphasis``: ``x[t] = y[t] + a x[t-1]`` along the last axis (numpy)."""
    import numpy as np
    from scipy.signal import lfilter

    y = np.asarray(y, dtype=np.float32)
    if not coefficient:
        return y
    return lfilter([1.0], [1.0, -coefficient], y, axis=-1).astype(np.float32)


class ResidualLayer(nn.Module):
    """One gated dilated causal convolution with residual and skip outputs."""

    def __init__(self, config: WaveNetConfig, dilation: int, has_residual: bool):
        super().__init__()
        self.dilation = dilation
        self.left_pad = (config.kernel_size - 1) * dilation
        self.dilated = nn.Conv1d(config.residual_channels, config.gate_channels,
                                 config.kernel_size, dilation=dilation)
        self.cond = (nn.Conv1d(config.cond_channels, config.gate_channels, 1, bias=False)
                     if config.conditioned else None)
        half = config.gate_channels // 2
        # The last layer's residual output would feed nothing: leaving it out keeps every
        # parameter used (DDP complains about unused ones).
        self.residual = nn.Conv1d(half, config.residual_channels, 1) if has_residual else None
        self.skip = nn.Conv1d(half, config.skip_channels, 1)

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """x: (B, R, T), cond: (B, C, T) or None -> (next x (B, R, T), skip (B, S, T))."""
        a = self.dilated(F.pad(x, (self.left_pad, 0)))  # (B, G, T), causal: output t sees <= t
        if self.cond is not None:
            a = a + self.cond(cond)
        filt, gate = a.chunk(2, dim=1)
        z = torch.tanh(filt) * torch.sigmoid(gate)  # (B, G/2, T)
        x_next = x + self.residual(z) if self.residual is not None else x
        return x_next, self.skip(z)
