"""The SimCLR network: a CNN trunk and the projection head its contrastive loss reads.

The embedding probed afterwards is the trunk's pooled output, *before* the projection head
(the head's output throws away what the augmentations vary, which a downstream task may
need). Training, augmentations and the loss are in ``tokenlm.baselines.simclr``.
"""

from __future__ import annotations

from torch import Tensor, nn

from tokenlm.models.cnn import VGGish

__all__ = ["SimCLRModel", "FrequencyBands"]


class SimCLRModel(nn.Module):
    """Trunk (pooled embedding) + 2-layer projection head used only by the loss."""

    def __init__(self, trunk: VGGish, projection_dim: int):
        super().__init__()
        self.trunk = trunk
        d = trunk.embed_dim
        self.projector = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, projection_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.trunk.embed(x))  # (B, projection_dim)


class FrequencyBands(nn.Module):
    """A VGGish trunk read with its frequency bands kept: ``embed`` pools each band's channels
    over time only (max + mean, as VGGish pools), (B, C x F'). VGGish's own embedding averages
    frequency out, which a supervised head can work around but a probe of a self-supervised
    trunk cannot: where in frequency a pattern sits (pitch) is gone."""

    def __init__(self, trunk: VGGish):
        super().__init__()
        self.trunk = trunk
        bands = trunk.config.n_mels
        for _ in trunk.config.channels:
            bands = -(-bands // 2)  # each block's 2x2 max-pool (ceil mode) halves frequency
        self.embed_dim = trunk.embed_dim * bands

    def embed(self, x: Tensor) -> Tensor:
        h = self.trunk.trunk(x)  # (B, C, F', T')
        return (h.amax(dim=-1) + h.mean(dim=-1)).flatten(1)  # (B, C * F')
