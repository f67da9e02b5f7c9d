"""Incremental decoding when the conditioning varies inside a code (decoded log-mel).

``IncrementalDecoder`` precomputes conditioning as per-code plus per-phase gate tables, exact
only when the conditioning is constant inside a code. With the log-mel conditioning
(``WaveNetConfig.mel_bins``) it changes every sample, so this decoder keeps the per-sample
conditioning tensor itself and projects one sample's column into every layer's gate with a
single (B, C) x (C, L * G) product per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenlm.models.wavenet.incremental import IncrementalDecoder

__all__ = ["SampleConditionedDecoder"]


class SampleConditionedDecoder(IncrementalDecoder):
    """``IncrementalDecoder`` whose gate bias at step t comes from ``upsample_conditioning``'s column t."""

    def _build_conditioning(self, model, codes: Tensor | None) -> None:
        cond = model.upsample_conditioning(codes)  # (B, C, T)
        self._cond = cond.permute(2, 0, 1).contiguous()  # (T, B, C): one row block per step
        w_cond = torch.stack([layer.cond.weight[:, :, 0] for layer in model.layers])  # (L, G, C)
        self._gate_width = w_cond.shape[1]
        self._w_cond = w_cond.permute(2, 0, 1).reshape(w_cond.shape[2], -1).contiguous()  # (C, L * G)
        self._code_gate = None

    def _gate_bias(self, t: int) -> Tensor:
        if t >= self._cond.shape[0]:
            raise IndexError(f"step {t} is past the end of the codes ({self._cond.shape[0]} samples)")
        gates = (self._cond[t] @ self._w_cond).view(self.batch_size, self.n_layers, self._gate_width)
        return gates.transpose(0, 1) + self.b_dilated  # (L, B, G)

    def _gate_bias_block(self, t: int, n: int) -> Tensor:
        """``_gate_bias`` for times t .. t+n-1 at once, one product for the block: (n, L, B, G)."""
        if t + n > self._cond.shape[0]:
            raise IndexError(f"step {t + n - 1} is past the end of the codes ({self._cond.shape[0]} samples)")
        gates = (self._cond[t:t + n] @ self._w_cond).view(n, self.batch_size, self.n_layers, self._gate_width)
        return (gates.transpose(1, 2) + self.b_dilated).contiguous()
