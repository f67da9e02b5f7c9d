"""The ``probe:`` recipe section, shared by two stages: ``ProbeConfig`` holds the probe's keys
(tokenlm.pipeline.probe), ``BaselinesConfig`` how the CNN baselines are trained
(tokenlm.pipeline.baselines). ``configs`` splits one flat section between them, so recipes keep
a single ``probe:`` section and an unknown key still names the keys of both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tokenlm.core.config import build, unknown_option
from tokenlm.core.errors import ConfigError
from tokenlm.evaluation.linear_probe import DEFAULT_CS
from tokenlm.evaluation.lm_readings import reading_candidates
from tokenlm.evaluation.pooling import AUTO, check_pooling

BASELINES = ("vgg", "simclr", "timbre")  # what `tokenlm baselines` trains when nothing is listed
IMAGENET = ("resnet18", "resnet50", "densenet121")  # ImageNet-style CNNs (tokenlm.models.imagenet)
# Every baseline there is: the above, Pons' temporal filters alone and beside the timbre ones,
# and the Audio Transformer.
KNOWN_BASELINES = BASELINES + ("temporal", "timbre+temporal", "audio_transformer") + IMAGENET


SECTION = "probe"


@dataclass(frozen=True)
class ProbeConfig:
    """The probe's keys of the ``probe:`` recipe section (the CNNs' keys: BaselinesConfig)."""

    baselines: tuple[str, ...] = ()  # any of KNOWN_BASELINES: trained (or reused), then tabled
    layers: str = "all"  # LM layers to probe: "all" or "0,2,4" (0 = embedding output)
    codebook_size: int | None = None  # codes to probe (bag of codes, LM); None: the run's current K
    cs: tuple[float, ...] = DEFAULT_CS  # inverse L2 strengths tried on val
    max_iter: int = 2000  # lbfgs iterations per fit
    seed: int = 0  # the probes' and the baselines'
    folds: bool = True  # also cross-validate over official folds when the dataset has them
    lm_batch_clips: int = 16  # clips per LM forward pass
    # Pooling over time of the autoencoder and LM rows: auto (the best on val), mean, mean+std, mean+max.
    pooling: str = AUTO
    concat_layers: bool = False  # also an lm_concat row: the probed LM layers side by side
    # How the LM reads a clip (tokenlm.evaluation.lm_readings): once (causal, or both ways for a
    # masked LM; the default: twice won on val on two demo tasks of three, not on keywords),
    # twice (a causal LM fed the clip twice, the second reading kept) or auto (the better on
    # val per task, recorded on lm_best as ``reading``).
    lm_reading: str = "once"

    def __post_init__(self):
        object.__setattr__(self, "baselines", parse_baselines(self.baselines))
        check_pooling(self.pooling, allow_auto=True)
        reading_candidates(self.lm_reading, "next")  # a clear error for an unknown reading
        object.__setattr__(self, "layers", _layers_text(self.layers))
        if not self.cs or min(self.cs) <= 0:
            raise ValueError("cs must be a non-empty list of positive numbers")


def _layers_text(value) -> str:
    """Normalise ``layers`` (a string, an int, or a YAML list) to "all" or "0,2,4"."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value).strip().lower().replace(" ", "")
    if text in ("", "all"):
        return "all"
    try:
        numbers = [int(v) for v in text.split(",") if v]
    except ValueError:
        numbers = []
    if not numbers:
        raise ValueError(f"layers takes 'all' or a comma list of layer numbers, got {value!r}")
    if min(numbers) < 0:
        raise ValueError("layer numbers start at 0 (the embedding output)")
    return ",".join(str(n) for n in sorted(set(numbers)))


@dataclass(frozen=True)
class BaselinesConfig:
    """The baselines' keys of the ``probe:`` recipe section: how the CNNs are trained."""

    crop_seconds: float = 1.0  # random training crops; evaluation averages whole-clip windows
    batch_size: int = 32
    epochs: int = 60  # upper bound; early stopping on val accuracy
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.3
    baseline_folds: bool = True  # supervised baselines: also train one model per official fold
    vgg_channels: tuple[int, ...] = (32, 64, 128, 256)
    vgg_convs_per_block: int = 2
    timbre_heights: tuple[float, ...] = (0.9, 0.5, 0.2)  # fractions of the mel axis
    timbre_widths: tuple[int, ...] = (1, 3)  # frames
    timbre_filters: int = 32
    temporal_widths: tuple[int, ...] = (9, 33, 65)  # horizontal filter lengths in frames (odd)
    temporal_filters: int = 32
    transformer_dim: int = 64  # the Audio Transformer
    transformer_layers: int = 4
    transformer_heads: int = 4
    transformer_pool_every: int = 2  # layers between max-poolings over time
    transformer_rates: int = 4  # multi-rate pooling groups of the embedding's dimensions
    imagenet_width: int = 64  # ResNet stem width (DenseNet growth: half); ImageNet weights need 64
    imagenet_weights: str | None = None  # a local safetensors / torch state dict: fine-tune from it
    simclr_epochs: int = 50
    simclr_batch_size: int = 64
    simclr_temperature: float = 0.1
    simclr_projection_dim: int = 128
    # The two views' crops: None anywhere in the clip (independent); S seconds: the second
    # starts within S s of the first (near crops share notes and words: tokenlm.baselines.simclr).
    simclr_view_offset: float | None = None
    # What the probe reads of the SimCLR trunk: pooled (frequency averaged out, as VGG's head
    # reads it), bands (each frequency band's channels kept) or auto (the better on val).
    simclr_embedding: str = "pooled"

    def __post_init__(self):
        if self.crop_seconds <= 0:
            raise ValueError("crop_seconds must be positive")
        if self.simclr_view_offset is not None and self.simclr_view_offset < 0:
            raise ValueError("simclr_view_offset must be >= 0 seconds (or null: independent crops)")
        if self.simclr_embedding not in ("pooled", "bands", "auto"):
            raise ValueError(f"simclr_embedding takes pooled, bands or auto, got {self.simclr_embedding!r}")


def parse_baselines(value) -> tuple[str, ...]:
    """Baseline names from "vgg,timbre" or a list, lower-cased, in order, "none" dropped."""
    given = value.split(",") if isinstance(value, str) else value
    names = tuple(b.strip().lower() for b in given if b.strip() and b.strip().lower() != "none")
    unknown = sorted(set(names) - set(KNOWN_BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)} (known: {', '.join(KNOWN_BASELINES)})")
    return tuple(dict.fromkeys(names))


def configs(*layers: Mapping | None) -> tuple[ProbeConfig, BaselinesConfig]:
    """The probe's and the baselines' configs out of one flat ``probe:`` section and command-
    line overrides, layered in order (None values fall through). Each key goes to the config
    that has it; a key that neither has is an error naming the keys of both."""
    owners = {f.name: cls for cls in (ProbeConfig, BaselinesConfig) for f in dataclasses.fields(cls)}
    for layer in layers:
        for key in layer or {}:
            if key.replace("-", "_") not in owners:
                raise unknown_option(SECTION, key.replace("-", "_"), owners)

    def part(cls, layer):
        return {k: v for k, v in (layer or {}).items() if owners[k.replace("-", "_")] is cls}

    probe = build(ProbeConfig, *(part(ProbeConfig, layer) for layer in layers), where=SECTION)
    baselines = build(BaselinesConfig, *(part(BaselinesConfig, layer) for layer in layers), where=SECTION)
    imagenet = [name for name in probe.baselines if name in IMAGENET]
    if baselines.imagenet_weights and len(imagenet) != 1:
        raise ConfigError(f"{SECTION}.imagenet_weights (--weights) loads into exactly one of "
                          f"{', '.join(IMAGENET)} in the baselines, got {', '.join(imagenet) or 'none'}")
    if baselines.imagenet_weights and not Path(baselines.imagenet_weights).is_file():
        raise ConfigError(f"{SECTION}.imagenet_weights (--weights): no such file {baselines.imagenet_weights}")
    return probe, baselines
