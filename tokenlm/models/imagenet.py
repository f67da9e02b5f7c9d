"""ImageNet-style CNNs on log-mel (Palanisamy et al. 2020, "Rethinking CNN models for audio
classification"): ResNet-18/50 and DenseNet-121, written here because torchvision's wheels
for this torch are CUDA builds whose operators do not load with the CPU torch.

Palanisamy et al. feed three mel spectrograms of different window and hop sizes as the three
image channels. The probe's clips are stored as one log-mel, so this is the practical
variant: the channels are the log-mel, its delta and its delta-delta over time (computed
inside the network from the usual ``(B, 1, n_mels, T)`` input).

Module and parameter names follow torchvision's (``conv1``, ``layer1.0.bn2``,
``features.denseblock1.denselayer1.conv1``, ...), so ImageNet weights saved from it load
as they are (``tokenlm.baselines.pretrained``); ``width`` (ResNet) and ``growth`` (DenseNet)
scale the networks down for CPU runs (ImageNet weights need 64 and 32).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResNetConfig", "ResNet", "DenseNetConfig", "DenseNet", "three_channels"]

RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}


def three_channels(x: Tensor) -> Tensor:
    """(B, 1, F, T) log-mel -> (B, 3, F, T): log-mel, delta, delta-delta (central differences)."""
    if x.shape[-1] < 2:
        return torch.cat([x, torch.zeros_like(x), torch.zeros_like(x)], dim=1)
    delta = torch.gradient(x, dim=-1)[0]
    return torch.cat([x, delta, torch.gradient(delta, dim=-1)[0]], dim=1)


# --------------------------------------------------------------------------- ResNet


@dataclass(frozen=True)
class ResNetConfig:
    n_mels: int = 64
    n_classes: int = 0
    depth: int = 18  # 18 (basic blocks) or 50 (bottlenecks)
    width: int = 64  # channels of the stem and the first stage (ImageNet: 64)
    pretrained: str | None = None  # the ImageNet weights file it started from (None: random init)

    def __post_init__(self):
        if self.depth not in RESNET_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {self.depth}")
        if self.width < 1:
            raise ValueError("width must be positive")


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)  # stride here, as torchvision's v1.5
        self.conv3, self.bn3 = _conv_bn(planes, planes * 4, 1)
        self.downsample = _shortcut(cin, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """Log-mel (B, 1, F, T) -> logits; ``embed``: the last stage averaged over F and T."""

    head_name = "fc"  # the ImageNet head, replaced by one for the task's classes

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        self.kind = f"resnet{config.depth}"
        kind, counts = RESNET_BLOCKS[config.depth]
        block = _Basic if kind == "basic" else _Bottleneck
        w = config.width
        self.conv1, self.bn1 = nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w)
        cin = w
        for i, count in enumerate(counts):
            planes, blocks = w * 2 ** i, []
            for j in range(count):
                blocks.append(block(cin, planes, 2 if i and not j else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.embed_dim = cin
        self.fc = nn.Linear(cin, config.n_classes) if config.n_classes > 0 else nn.Identity()

    def embed(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(three_channels(x)))), 3, 2, 1)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return h.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))


# --------------------------------------------------------------------------- DenseNet


@dataclass(frozen=True)
class DenseNetConfig:
    n_mels: int = 64
    n_classes: int = 0
    growth: int = 32  # channels each layer adds (ImageNet: 32; the stem has 2x)
    blocks: tuple[int, ...] = (6, 12, 24, 16)  # DenseNet-121
    bn_size: int = 4
    pretrained: str | None = None  # the ImageNet weights file it started from (None: random init)

    def __post_init__(self):
        if self.growth < 1 or not self.blocks or min(self.blocks) < 1:
            raise ValueError("growth and every block's layer count must be positive")


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int, bn_size: int):
        super().__init__({f"denselayer{i + 1}": _DenseLayer(cin + i * growth, growth, bn_size)
                          for i in range(layers)})

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class DenseNet(nn.Module):
    """Log-mel (B, 1, F, T) -> logits; ``embed``: the last block averaged over F and T."""

    head_name = "classifier"
    kind = "densenet121"

    def __init__(self, config: DenseNetConfig):
        super().__init__()
        self.config = config
        channels = 2 * config.growth
        layers: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(3, channels, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(channels)),
            ("relu0", nn.ReLU()), ("pool0", nn.MaxPool2d(3, 2, 1))]
        for i, count in enumerate(config.blocks):
            layers.append((f"denseblock{i + 1}", _DenseBlock(count, channels, config.growth, config.bn_size)))
            channels += count * config.growth
            if i + 1 < len(config.blocks):
                layers.append((f"transition{i + 1}", nn.Sequential(OrderedDict(
                    norm=nn.BatchNorm2d(channels), relu=nn.ReLU(), conv=nn.Conv2d(channels, channels // 2, 1, bias=False),
                    pool=nn.AvgPool2d(2, 2, ceil_mode=True)))))
                channels //= 2
        layers.append(("norm5", nn.BatchNorm2d(channels)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.embed_dim = channels
        self.classifier = nn.Linear(channels, config.n_classes) if config.n_classes > 0 else nn.Identity()

    def embed(self, x: Tensor) -> Tensor:
        return F.relu(self.features(three_channels(x))).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))
