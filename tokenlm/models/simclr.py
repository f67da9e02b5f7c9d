"""The SimCLR network: a CNN trunk and the projection head its contrastive loss reads.

The embedding probed afterwards is the trunk's pooled output, *before* the projection head
(the head's output throws away what the augmentations vary, which a downstream task may
need). Training, augmentations and the loss are in ``tokenlm.baselines.simclr``.
"""

from __future__ import annotations

from torch import Tensor, nn

from tokenlm.models.cnn import VGGish

__all__ = ["SimCLRModel"]


class SimCLRModel(nn.Module):
    """Trunk (pooled embedding) + 2-layer projection head used only by the loss."""

    def __init__(self, trunk: VGGish, projection_dim: int):
        super().__init__()
        self.trunk = trunk
        d = trunk.embed_dim
        self.projector = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, projection_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.trunk.embed(x))  # (B, projection_dim)
