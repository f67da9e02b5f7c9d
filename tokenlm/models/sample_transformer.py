"""A causal transformer over 8-bit mu-law samples: next-sample prediction as 256-way
classification (Verma & Chafe, "A Generative Model for Raw Audio Using Transformer
Architectures", 2021), the transformer that ``tokenlm rawlm`` sets against a WaveNet.

Interface as the WaveNet's (``tokenlm.models.wavenet``): ``forward(audio_q)`` takes (B, T)
mu-law classes (the targets) and returns logits (B, n_classes, T), position t predicting
sample t from the samples before it (inputs shifted right, silence first).

With ``codebook_size`` > 0 it is also given the wider context as codes: the tokenizer's codes
of the ``prefix_codes`` patches *before* the window, embedded and put in front of the samples
as prefix tokens (a missing code, before a clip starts, is a learned padding token). Every
sample attends to them; the codes of the window's own patches are never shown, since a code
summarises its whole patch, future samples included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenlm.models.blocks import Block
from tokenlm.models.wavenet import mu_law_encode

__all__ = ["SampleTransformerConfig", "SampleTransformer", "matched_width"]


@dataclass(frozen=True)
class SampleTransformerConfig:
    n_classes: int = 256
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    context: int = 1024  # samples: the longest window (learned positions)
    codebook_size: int = 0  # > 0: conditioned on the codes before the window
    prefix_codes: int = 8  # how many
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("n_classes", "d_model", "n_layer", "n_head", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_head {self.n_head}")
        if self.codebook_size and self.prefix_codes < 1:
            raise ValueError("a conditioned transformer needs prefix_codes >= 1")

    @property
    def conditioned(self) -> bool:
        return bool(self.codebook_size)


class SampleTransformer(nn.Module):
    def __init__(self, config: SampleTransformerConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.sample_embedding = nn.Embedding(config.n_classes, d)
        self.position = nn.Parameter(0.02 * torch.randn(config.context + config.prefix_codes * config.conditioned, d))
        if config.conditioned:
            self.code_embedding = nn.Embedding(config.codebook_size + 1, d)  # the last: no code (before the clip)
        self.blocks = nn.Sequential(*(Block(d, config.n_head, config.dropout, causal=True)
                                      for _ in range(config.n_layer)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.n_classes)

    @property
    def silence_class(self) -> int:
        return int(mu_law_encode(torch.zeros(()), self.config.n_classes))

    def forward(self, audio_q: Tensor, prefix: Tensor | None = None) -> Tensor:
        """audio_q (B, T) targets, prefix (B, prefix_codes) codes (``codebook_size`` = none)
        -> logits (B, n_classes, T); position t sees samples < t and the prefix only."""
        cfg = self.config
        if audio_q.dim() != 2 or audio_q.shape[1] > cfg.context:
            raise ValueError(f"audio_q must be (batch, <= {cfg.context} samples), got {tuple(audio_q.shape)}")
        if cfg.conditioned != (prefix is not None):
            raise ValueError("pass prefix codes exactly when the transformer is conditioned (codebook_size > 0)")
        start = torch.full_like(audio_q[:, :1], self.silence_class)
        x = self.sample_embedding(torch.cat([start, audio_q[:, :-1]], dim=1))  # (B, T, d)
        if prefix is not None:
            if prefix.shape != (audio_q.shape[0], cfg.prefix_codes):
                raise ValueError(f"prefix must be (batch, {cfg.prefix_codes}), got {tuple(prefix.shape)}")
            x = torch.cat([self.code_embedding(prefix), x], dim=1)
        length = x.shape[1]
        h = self.norm(self.blocks(x + self.position[:length]))
        return self.head(h[:, length - audio_q.shape[1]:]).transpose(1, 2)  # (B, n_classes, T)

    @torch.no_grad()
    def generate(self, prompt_q: Tensor, n_samples: int, prefix: Tensor | None = None, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:
        """Continue ``prompt_q`` (B, P) by ``n_samples`` mu-law classes, the window sliding
        over the last ``context`` samples (recomputed each step: no cache, a short-clip tool)."""
        out = prompt_q.long()
        for _ in range(n_samples):
            window = out[:, -(self.config.context - 1):]
            # A dummy last target: the logits at position T-1 predict the sample after the window.
            logits = self(torch.cat([window, window[:, -1:]], dim=1), prefix)[:, :, -1]
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                probs = F.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            out = torch.cat([out, nxt[:, None]], dim=1)
        return out[:, prompt_q.shape[1]:]


def matched_width(config: SampleTransformerConfig, target_params: int) -> SampleTransformerConfig:
    """``config`` with the ``d_model`` (a multiple of n_head) whose parameter count comes
    closest to ``target_params``: the transformer sized to the WaveNet it is compared with."""
    from dataclasses import replace

    def params(d: int) -> int:
        return sum(p.numel() for p in SampleTransformer(replace(config, d_model=d)).parameters())

    step = config.n_head
    best = min(range(step, 8 * int(math.sqrt(target_params)) + step, step),
               key=lambda d: abs(_estimate(config, d) - target_params))
    # The estimate is exact up to layer norms; check the neighbours with the real count.
    return replace(config, d_model=min((best - step, best, best + step),
                                       key=lambda d: abs(params(d) - target_params) if d > 0 else math.inf))


def _estimate(config: SampleTransformerConfig, d: int) -> int:
    blocks = config.n_layer * (12 * d * d + 13 * d)
    tables = (config.n_classes + config.context + (config.codebook_size + 1 + config.prefix_codes)
              * config.conditioned) * d
    return blocks + tables + d * config.n_classes + config.n_classes + 2 * d
