"""``WaveNetConfig``: the WaveNet decoder's architecture (model.py builds it), with what
follows from it (receptive field, dilations), checked on construction and saved as JSON next
to the weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tokenlm.core.config import build

GAINS = ("codes", "signal", "capped")  # what sets the LPC excitation's level (tokenlm.vocoder.lpc.analyse)

__all__ = ["WaveNetConfig"]


@dataclass(frozen=True)
class WaveNetConfig:
    """Architecture of the WaveNet decoder; saved as JSON next to the weights.

    ``codebook_size`` is the tokenizer's codebook size; 0 or None builds an unconditioned model.
    Dilations are 1, 2, 4, ..., 2**(layers_per_cycle-1), repeated ``cycles`` times.
    ``gate_channels`` is the width of the dilated convolution's output, split in half into the
    tanh (filter) and sigmoid (gate) parts.
    """

    layers_per_cycle: int = 10
    cycles: int = 2
    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 128
    kernel_size: int = 2
    n_classes: int = 256
    codebook_size: int | None = 256
    cond_channels: int = 64
    samples_per_code: int = 800
    sample_rate: int = 16000
    mel_bins: int = 0  # bins of the decoded log-mel conditioning; 0: code embedding only
    frames_per_code: int = 1  # log-mel frames of one code's patch (the tokenizer's patch_frames)
    # The network models pre_emphasis(audio) (modules.py); the Vocoder undoes it after sampling. 0: off.
    pre_emphasis: float = 0.0
    # > 0: the network models the excitation of a linear predictor of this order read off each
    # code's decoded log-mel (tokenlm.vocoder.lpc); the table (``code_lpc``) travels with the weights.
    lpc_order: int = 0
    # What normalises that excitation's level in training (tokenlm.vocoder.lpc.analyse): "codes", the
    # codes' predictor error; "signal", each frame's own RMS (the codes then set the level alone);
    # "capped", the larger of the two.
    lpc_gain: str = "codes"
    # The output distribution over the n_classes (distribution.py): 0, a softmax; M > 0, a
    # discretized mixture of M logistics (generated with the torch decoder: the fused step is the softmax's).
    logistic_components: int = 0

    def __post_init__(self) -> None:
        for name in ("layers_per_cycle", "cycles", "residual_channels", "gate_channels",
                     "skip_channels", "cond_channels", "samples_per_code", "sample_rate"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2 for a dilated convolution, got {self.kernel_size}")
        if self.gate_channels % 2:
            raise ValueError(f"gate_channels must be even (tanh half + sigmoid half), got {self.gate_channels}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.codebook_size is not None and self.codebook_size < 0:
            raise ValueError(f"codebook_size must be >= 0 (0 or None: unconditioned), got {self.codebook_size}")
        if self.mel_bins < 0 or self.frames_per_code < 1:
            raise ValueError(f"need mel_bins >= 0 and frames_per_code >= 1, got {self.mel_bins}, {self.frames_per_code}")
        if not 0.0 <= self.pre_emphasis < 1.0:
            raise ValueError(f"pre_emphasis must be in [0, 1), got {self.pre_emphasis}")
        if self.lpc_order < 0 or (self.lpc_order and not self.conditioned):
            raise ValueError(f"lpc_order must be >= 0, and needs codes (codebook_size > 0), got {self.lpc_order}")
        if self.lpc_gain not in GAINS:
            raise ValueError(f"lpc_gain must be one of {', '.join(GAINS)}, got {self.lpc_gain!r}")
        if self.logistic_components < 0:
            raise ValueError(f"logistic_components must be >= 0 (0: softmax), got {self.logistic_components}")
        if self.mel_bins and not self.conditioned:
            raise ValueError("mel_bins > 0 needs codes (codebook_size > 0): the log-mel is the codes' own")

    @property
    def mel_conditioned(self) -> bool:
        """Whether the codes' decoded log-mel conditions the model too."""
        return self.conditioned and self.mel_bins > 0

    @property
    def conditioned(self) -> bool:
        """Whether the model takes codes."""
        return bool(self.codebook_size)

    @property
    def n_layers(self) -> int:
        return self.layers_per_cycle * self.cycles

    @property
    def dilations(self) -> list[int]:
        return [2**i for i in range(self.layers_per_cycle)] * self.cycles

    @property
    def receptive_field(self) -> int:
        """Number of past inputs (previous samples) that one output depends on."""
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    def to_dict(self) -> dict:
        """Plain JSON-able dict, the inverse of ``from_dict``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WaveNetConfig":
        """Build from ``to_dict`` output; an unknown key raises ConfigError naming the known ones.
        Vocoders saved before the vocabulary was unified call the codebook size vocab_size."""
        data = dict(data)
        if "vocab_size" in data and "codebook_size" not in data:
            data["codebook_size"] = data.pop("vocab_size")
        return build(cls, data, where="wavenet")
