"""A pre-norm transformer block, shared by the raw-audio transformer and the Audio
Transformer. Written out (rather than ``nn.TransformerEncoderLayer``) so that it runs the same
ops in training and in evaluation: torch's fused inference path of the latter hides its
matrix products from ``FlopCounterMode``, and the FLOPs the tables report must be counted."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Block"]


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x)); (B, T, dim) -> (B, T, dim)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        self.heads, self.dropout, self.causal = heads, dropout, causal
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal)
        x = x + F.dropout(self.out(h.transpose(1, 2).reshape(b, t, d)), self.dropout, self.training)
        return x + self.mlp(self.norm2(x))
