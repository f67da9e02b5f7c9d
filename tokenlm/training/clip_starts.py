"""Training sequences made of clip openings (``lm.start_crops``): train what the probe reads.

The probe reads a task clip from its BOS with no context before it (a 1 s clip is 20 codes),
but packed training sequences (``tokenlm.pipeline.pretrain.PackedClips``) put most targets deep
into long clips: on the demo corpus fewer than 6% of targets sit within a clip's first 20
codes. ``ClipStarts`` replaces a share of the training sequences by packed *openings*: each is
``[BOS, c0 .. c_{L-1}]`` of a random clip, L drawn uniformly from ``crop_codes`` (lengths
like the tasks' clips), and its last position's target is the clip's true next code c_L (or
the next BOS when the clip really ends there), so no target is a made-up clip end.

Every target of an opening sequence is one of a clip's first ``crop_codes[1] + 1`` codes, and
an opening sequence has as many targets as a packed one (``context``), so ``share`` is the
share of training targets drawn from openings. A batch stays a pure function of the step's
generator (``tokenlm.training.data``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ClipStarts"]


class ClipStarts:
    """Batches from ``packed`` (a PackedClips) with each sequence, with probability ``share``,
    made of clip openings instead. Returns (input_ids (B, context), labels (B, context))."""

    def __init__(self, packed, share: float, crop_codes: tuple[int, int]):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"start_crops must be in [0, 1], got {share}")
        low, high = crop_codes
        if not 1 <= low <= high:
            raise ValueError(f"crop_codes must be two lengths 1 <= low <= high, got {crop_codes}")
        self.packed, self.share, self.low, self.high = packed, share, low, high

    def __call__(self, rng: np.random.Generator, batch_size: int):
        inputs, labels = self.packed(rng, batch_size)  # (B, context) each
        openings = rng.random(batch_size) < self.share
        for row in np.flatnonzero(openings):
            inputs[row], labels[row] = self.openings(rng)
        return inputs, labels

    def openings(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One sequence of packed clip openings: (inputs (context,), labels (context,))."""
        packed = self.packed
        width = packed.context
        ids, targets = [], []
        while len(ids) < width:
            clip = packed.draw_clip(rng)
            n = int(packed.lengths[clip])
            length = min(int(rng.integers(self.low, self.high + 1)), n)
            first = int(packed.offsets[clip])
            codes = np.asarray(packed.data[first:first + length + 1], dtype=np.int64)  # c0 .. c_L (if any)
            ids += [packed.bos, *codes[:length]]
            # c_L when the clip goes on, else the clip really ends: the next BOS.
            targets += [*codes[:length], codes[length] if len(codes) > length else packed.bos]
        return (torch.tensor(ids[:width], dtype=torch.long), torch.tensor(targets[:width], dtype=torch.long))
