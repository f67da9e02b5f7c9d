"""FLOPs of a forward pass, counted by torch (``torch.utils.flop_counter.FlopCounterMode``):
matrix products, convolutions and attention, 2 FLOPs per multiply-accumulate; elementwise
ops, norms and pooling are left out, as every published FLOPs figure does."""

from __future__ import annotations

from typing import Any, Callable

import torch


def forward_flops(forward: Callable[[], Any]) -> int:
    """FLOPs of calling ``forward()`` once, without gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward()
    return int(counter.get_total_flops())
