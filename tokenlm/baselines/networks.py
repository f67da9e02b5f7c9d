"""Which network each supervised baseline is, from the ``probe:`` section's keys: its config,
its title in the probe table, and the network itself (ImageNet weights loaded when asked)."""

from __future__ import annotations

from torch import nn

from tokenlm.baselines.pretrained import load_imagenet_weights
from tokenlm.models.audio_transformer import AudioTransformerConfig
from tokenlm.models.cnn import MODELS, TemporalConfig, TimbreConfig, TimbreTemporalConfig, VGGConfig
from tokenlm.models.imagenet import DenseNetConfig, ResNetConfig

__all__ = ["IMAGENET", "network_config", "build_network", "title"]

IMAGENET = ("resnet18", "resnet50", "densenet121")  # the ImageNet-style family (Palanisamy et al.)

TITLES = {
    "vgg": "VGG-style CNN (supervised)",
    "timbre": "timbre CNN, vertical filters (supervised)",
    "temporal": "temporal CNN, horizontal filters (supervised)",
    "timbre+temporal": "timbre + temporal CNN, both branches (supervised)",
    "audio_transformer": "Audio Transformer, multi-rate pooling, on log-mel frames (supervised)",
    "resnet18": "ResNet-18 on log-mel + deltas",
    "resnet50": "ResNet-50 on log-mel + deltas",
    "densenet121": "DenseNet-121 on log-mel + deltas",
}


def network_config(name: str, n_mels: int, n_classes: int, config):
    """The network config of baseline ``name`` (``config``: the BaselinesConfig)."""
    common = {"n_mels": n_mels, "n_classes": n_classes}
    if name == "timbre":
        return TimbreConfig(**common, heights=config.timbre_heights, widths=config.timbre_widths,
                            filters=config.timbre_filters, dropout=config.dropout)
    if name == "temporal":
        return TemporalConfig(**common, widths=config.temporal_widths, filters=config.temporal_filters,
                              dropout=config.dropout)
    if name == "timbre+temporal":
        return TimbreTemporalConfig(**common, heights=config.timbre_heights, widths=config.timbre_widths,
                                    filters=config.timbre_filters, temporal_widths=config.temporal_widths,
                                    temporal_filters=config.temporal_filters, dropout=config.dropout)
    if name == "audio_transformer":
        return AudioTransformerConfig(**common, dim=config.transformer_dim, layers=config.transformer_layers,
                                      heads=config.transformer_heads, pool_every=config.transformer_pool_every,
                                      rates=config.transformer_rates, dropout=config.dropout)
    if name in IMAGENET:
        if name == "densenet121":
            return DenseNetConfig(**common, growth=max(1, config.imagenet_width // 2),
                                  pretrained=config.imagenet_weights)
        return ResNetConfig(**common, depth=int(name.removeprefix("resnet")), width=config.imagenet_width,
                            pretrained=config.imagenet_weights)
    return VGGConfig(**common, channels=config.vgg_channels, convs_per_block=config.vgg_convs_per_block,
                     dropout=config.dropout)


def build_network(name: str, model_config) -> nn.Module:
    """A fresh network (seed torch first); an ImageNet-style CNN starts from its config's
    ``pretrained`` weights file when it names one."""
    model = MODELS[name][1](model_config)
    if getattr(model_config, "pretrained", None):
        load_imagenet_weights(model, model_config.pretrained)
    return model


def title(name: str, model_config) -> str:
    """The baseline's row title; the ImageNet family says how it started."""
    if name not in IMAGENET:
        return TITLES[name]
    start = "ImageNet weights, fine-tuned" if model_config.pretrained else "random init"
    return f"{TITLES[name]} ({start}, supervised)"
