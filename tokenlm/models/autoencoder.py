"""The patch autoencoder: 3 fully-connected encoder layers, 3 decoder layers.

A patch (patch_frames x n_mels, normalised per mel bin, flattened) is squeezed to a small
bottleneck vector; k-means on those vectors gives the codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AutoencoderConfig:
    hidden: tuple[int, ...] = (512, 256)  # the two hidden widths; the third layer is the bottleneck
    bottleneck: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        if len(self.hidden) != 2:
            raise ValueError("hidden takes two widths: 3 encoder layers = hidden[0], hidden[1], bottleneck")


class PatchAutoencoder(nn.Module):
    """(N, patch_dim) -> bottleneck (N, d) -> reconstruction (N, patch_dim)."""

    def __init__(self, patch_dim: int, config: AutoencoderConfig = AutoencoderConfig()):
        super().__init__()
        h1, h2 = config.hidden
        self.encoder = _mlp([patch_dim, h1, h2, config.bottleneck], config.dropout)
        self.decoder = _mlp([config.bottleneck, h2, h1, patch_dim], config.dropout)

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        return self.encoder(patches)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(patches))


def _mlp(widths: list[int], dropout: float) -> nn.Sequential:
    """Linear layers with GELU between them; the last layer is linear (bottleneck or output)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(nn.GELU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
