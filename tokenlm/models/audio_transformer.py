"""The Audio Transformer classifier (Verma & Berger, "Audio Transformers: Transformer
Architectures for Large Scale Audio Understanding", 2021), on log-mel frames.

The paper reads raw-audio frames through a learned front end; here the front end is a
linear map of each log-mel frame (the probe's clips are stored as log-mel, so every baseline
reads the same input). Then:

- transformer layers over frames, with max-pooling over time (by 2) between groups of
  ``pool_every`` layers, so deeper layers see coarser, longer spans;
- after every layer, the wavelet-like multi-rate pooling of the embeddings: the embedding's
  dimensions are split into ``rates`` groups, the first (finest) left as it is and group g
  averaged over a window of 2**g + 1 frames, so coarse dimensions summarise long spans and
  fine ones keep the detail;
- mean + max over time, a linear head.

Reads normalised log-mel ``(B, 1, n_mels, T)`` like the CNNs; ``embed`` gives (B, dim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenlm.models.blocks import Block

__all__ = ["AudioTransformerConfig", "AudioTransformer", "multi_rate_pool"]


@dataclass(frozen=True)
class AudioTransformerConfig:
    n_mels: int = 64
    n_classes: int = 0
    dim: int = 64
    layers: int = 4
    heads: int = 4
    pool_every: int = 2  # layers between poolings over time (0: never)
    rates: int = 4  # multi-rate groups of the embedding's dimensions (1: no multi-rate pooling)
    dropout: float = 0.1

    def __post_init__(self):
        if min(self.n_mels, self.dim, self.layers, self.heads, self.rates) < 1 or self.pool_every < 0:
            raise ValueError("n_mels, dim, layers, heads and rates must be positive, pool_every >= 0")
        if self.dim % self.heads or self.dim < self.rates:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads} and >= rates {self.rates}")


def multi_rate_pool(h: Tensor, rates: int) -> Tensor:
    """(B, T, D) -> (B, T, D): dimension group g (of ``rates`` near-equal groups, fine to
    coarse) averaged over 2**g + 1 frames centred on each frame (group 0 untouched)."""
    groups = torch.tensor_split(h, rates, dim=2)
    out = [groups[0]]
    for g, part in enumerate(groups[1:], start=1):
        width = 2 ** g + 1
        pooled = F.avg_pool1d(part.transpose(1, 2), width, stride=1, padding=width // 2, count_include_pad=False)
        out.append(pooled.transpose(1, 2))
    return torch.cat(out, dim=2)


class AudioTransformer(nn.Module):
    def __init__(self, config: AudioTransformerConfig):
        super().__init__()
        self.config = config
        self.frontend = nn.Linear(config.n_mels, config.dim)  # the learned filterbank over mel bins
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.dropout) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.embed_dim = config.dim
        self.head = nn.Identity() if config.n_classes <= 0 else nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(config.dim, config.n_classes))

    def embed(self, x: Tensor) -> Tensor:
        cfg = self.config
        h = self.frontend(x[:, 0].transpose(1, 2))  # (B, T, dim)
        h = h + _positions(h.shape[1], cfg.dim, h.device)
        for i, block in enumerate(self.blocks):
            h = multi_rate_pool(block(h), cfg.rates) if cfg.rates > 1 else block(h)
            if cfg.pool_every and (i + 1) % cfg.pool_every == 0 and i + 1 < cfg.layers and h.shape[1] > 1:
                h = F.max_pool1d(h.transpose(1, 2), 2, ceil_mode=True).transpose(1, 2)
        h = self.norm(h)
        return h.mean(dim=1) + h.amax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def _positions(length: int, dim: int, device) -> Tensor:
    """Sinusoidal positions (T, dim): any clip length, nothing learned."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table
