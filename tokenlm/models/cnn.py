"""Convolutional baselines on log-mel: a VGG-style CNN and a timbre CNN with vertical filters.

Both read normalised log-mel shaped ``(B, 1, n_mels, T)`` and return class logits, or with
``embed`` a pooled clip vector, so a clip of any length gives one vector.

- ``VGGish``: the generic computer-vision recipe, stacks of 3x3 conv + batch norm + ReLU +
  2x2 max-pool, global pooling, linear head. Strong but costly: every layer scans the whole
  time-frequency plane with small filters.
- ``TimbreCNN``: the audio-informed design (Pons et al., "Timbre analysis of music audio
  signals with convolutional neural networks", 2017). One conv layer whose filters are tall
  (a large fraction of the mel axis) and narrow (a few frames), so each filter matches a
  spectral envelope, i.e. timbre; max-pooling over frequency makes it pitch-shift tolerant,
  max-pooling over time makes it position-free. Far fewer FLOPs than VGG.
- ``TemporalCNN`` and ``TimbreTemporalCNN``: Pons' horizontal filters (energy envelopes
  over time) alone, and beside the vertical ones.

``MODELS`` also registers the Audio Transformer (``models.audio_transformer``) and the
ImageNet-style CNNs (``models.imagenet``): every supervised baseline by name.

Training, crops, whole-clip windows, costs and save/load are in ``tokenlm.baselines.cnn``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["VGGConfig", "VGGish", "TimbreConfig", "TimbreCNN", "TemporalConfig", "TemporalCNN",
           "TimbreTemporalConfig", "TimbreTemporalCNN", "MODELS"]


# --------------------------------------------------------------------------- VGG


@dataclass(frozen=True)
class VGGConfig:
    """VGG-style CNN. ``n_classes=0`` builds the trunk only (e.g. for SimCLR)."""

    n_mels: int = 64
    n_classes: int = 0
    channels: tuple[int, ...] = (32, 64, 128, 256)  # one block per entry, each halves F and T
    convs_per_block: int = 2
    dropout: float = 0.3

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1 or self.convs_per_block < 1:
            raise ValueError("channels must be a non-empty list of positive ints, convs_per_block >= 1")


class VGGish(nn.Module):
    """Log-mel (B, 1, F, T) -> logits (B, n_classes); ``embed`` gives (B, channels[-1])."""

    def __init__(self, config: VGGConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch in config.channels:
            for _ in range(config.convs_per_block):
                # No conv bias: batch norm's shift does that job.
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
                in_ch = out_ch
            # ceil_mode keeps at least one cell, so a clip shorter than 2**blocks frames still works.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.trunk = nn.Sequential(*layers)
        self.embed_dim = config.channels[-1]
        self.head = _head(self.embed_dim, config.n_classes, config.dropout)

    def embed(self, x: Tensor) -> Tensor:
        h = self.trunk(x)  # (B, C, F', T')
        h = h.mean(dim=2)  # (B, C, T'): frequency averaged out
        # max + mean over time: max catches short events, mean the texture (as in PANNs).
        return h.amax(dim=-1) + h.mean(dim=-1)  # (B, C)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


# --------------------------------------------------------------------------- timbre


@dataclass(frozen=True)
class TimbreConfig:
    """Single-layer CNN with vertical filters; one branch per (height, width) pair."""

    n_mels: int = 64
    n_classes: int = 0
    heights: tuple[float, ...] = (0.9, 0.5, 0.2)  # filter height as a fraction of n_mels
    widths: tuple[int, ...] = (1, 3)  # filter width in frames (odd: keeps T)
    filters: int = 32  # per branch
    dropout: float = 0.3

    def __post_init__(self):
        if not self.heights or not all(0 < h <= 1 for h in self.heights):
            raise ValueError(f"heights are fractions of the mel axis in (0, 1], got {self.heights}")
        if not self.widths or not all(w >= 1 and w % 2 == 1 for w in self.widths):
            raise ValueError(f"widths must be odd positive frame counts, got {self.widths}")
        if self.filters < 1:
            raise ValueError("filters must be positive")

    @property
    def kernel_sizes(self) -> list[tuple[int, int]]:
        heights = sorted({max(1, round(h * self.n_mels)) for h in self.heights}, reverse=True)
        return [(h, w) for h in heights for w in self.widths]


class TimbreCNN(nn.Module):
    """Log-mel (B, 1, F, T) -> logits; ``embed`` gives (B, filters * branches)."""

    def __init__(self, config: TimbreConfig):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(1, config.filters, (h, w), padding=(0, w // 2), bias=False),
                nn.BatchNorm2d(config.filters),
                nn.ReLU(),
            )
            for h, w in config.kernel_sizes
        )
        self.embed_dim = config.filters * len(self.branches)
        self.head = _head(self.embed_dim, config.n_classes, config.dropout)

    def embed(self, x: Tensor) -> Tensor:
        pooled = []
        for branch in self.branches:
            h = branch(x)  # (B, filters, F - height + 1, T)
            pooled.append(h.amax(dim=(2, 3)))  # (B, filters): max over frequency and time
        return torch.cat(pooled, dim=1)  # (B, filters * branches)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def _head(dim: int, n_classes: int, dropout: float) -> nn.Module:
    if n_classes <= 0:
        return nn.Identity()
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))


# --------------------------------------------------------------------------- temporal


@dataclass(frozen=True)
class TemporalConfig:
    """Single-layer CNN with horizontal (temporal) filters on the frequency-averaged log-mel
    (Pons & Serra 2017): one branch per filter length, in frames."""

    n_mels: int = 64
    n_classes: int = 0
    widths: tuple[int, ...] = (9, 33, 65)  # odd frame counts (keep T); 0.1-0.6 s at a 10 ms hop
    filters: int = 32  # per branch
    dropout: float = 0.3

    def __post_init__(self):
        if not self.widths or not all(w >= 1 and w % 2 == 1 for w in self.widths):
            raise ValueError(f"temporal widths must be odd positive frame counts, got {self.widths}")
        if self.filters < 1:
            raise ValueError("filters must be positive")


class TemporalCNN(nn.Module):
    """Log-mel (B, 1, F, T) -> logits; ``embed`` gives (B, filters * branches). Each filter
    spans 1 x width: it matches an energy envelope over time (onsets, rhythm, decay), and is
    blind to pitch and timbre, the complement of the timbre CNN's vertical filters."""

    def __init__(self, config: TemporalConfig):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv1d(1, config.filters, w, padding=w // 2, bias=False),
                          nn.BatchNorm1d(config.filters), nn.ReLU())
            for w in config.widths
        )
        self.embed_dim = config.filters * len(self.branches)
        self.head = _head(self.embed_dim, config.n_classes, config.dropout)

    def embed(self, x: Tensor) -> Tensor:
        envelope = x.mean(dim=2)  # (B, 1, T): the spectrogram averaged over frequency
        return torch.cat([branch(envelope).amax(dim=-1) for branch in self.branches], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


@dataclass(frozen=True)
class TimbreTemporalConfig:
    """Both branches side by side (Pons et al. 2016): vertical timbre filters + temporal ones."""

    n_mels: int = 64
    n_classes: int = 0
    heights: tuple[float, ...] = (0.9, 0.5, 0.2)
    widths: tuple[int, ...] = (1, 3)
    filters: int = 32
    temporal_widths: tuple[int, ...] = (9, 33, 65)
    temporal_filters: int = 32
    dropout: float = 0.3

    @property
    def parts(self) -> tuple[TimbreConfig, TemporalConfig]:
        return (TimbreConfig(self.n_mels, 0, self.heights, self.widths, self.filters),
                TemporalConfig(self.n_mels, 0, self.temporal_widths, self.temporal_filters))

    def __post_init__(self):
        self.parts  # noqa: B018 - builds both to check their values


class TimbreTemporalCNN(nn.Module):
    """Log-mel (B, 1, F, T) -> logits; ``embed``: the timbre and temporal vectors concatenated."""

    def __init__(self, config: TimbreTemporalConfig):
        super().__init__()
        self.config = config
        timbre, temporal = config.parts
        self.timbre, self.temporal = TimbreCNN(timbre), TemporalCNN(temporal)
        self.embed_dim = self.timbre.embed_dim + self.temporal.embed_dim
        self.head = _head(self.embed_dim, config.n_classes, config.dropout)

    def embed(self, x: Tensor) -> Tensor:
        return torch.cat([self.timbre.embed(x), self.temporal.embed(x)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


from tokenlm.models.audio_transformer import AudioTransformer, AudioTransformerConfig  # noqa: E402
from tokenlm.models.imagenet import DenseNet, DenseNetConfig, ResNet, ResNetConfig  # noqa: E402

# name -> (config class, network class); a network whose ``kind`` differs by config (ResNet
# 18 or 50) says its name itself.
MODELS = {
    "vgg": (VGGConfig, VGGish),
    "timbre": (TimbreConfig, TimbreCNN),
    "temporal": (TemporalConfig, TemporalCNN),
    "timbre+temporal": (TimbreTemporalConfig, TimbreTemporalCNN),
    "audio_transformer": (AudioTransformerConfig, AudioTransformer),
    "resnet18": (ResNetConfig, ResNet),
    "resnet50": (ResNetConfig, ResNet),
    "densenet121": (DenseNetConfig, DenseNet),
}
