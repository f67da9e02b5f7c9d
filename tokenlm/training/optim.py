"""The optimiser (AdamW), its schedule (warmup then cosine) and the autocast precision."""

from __future__ import annotations

import math

import torch
from torch import nn

from tokenlm.core.errors import ConfigError
from tokenlm.training.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for the optimiser step that follows ``step`` completed steps:
    linear warmup to 1, then a cosine down to ``min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on tensors of 2+ dimensions (weights, embeddings) and none on
    biases and norm gains, which decay would only pull towards zero for nothing."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # The fused kernel is one pass over all parameters (CPU and CUDA): measurably faster than
    # foreach for small models where the optimiser step is a visible share of the step time.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast on CUDA under precision auto or bf16; a no-op context otherwise."""
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        raise ConfigError("precision bf16 is for CUDA; use fp32 (or auto) on CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)
