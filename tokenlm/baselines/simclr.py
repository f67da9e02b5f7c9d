"""SimCLR on log-mel: the self-supervised CNN baseline.

The VGG-style trunk of ``tokenlm.models.cnn`` learns without labels: two augmented views of
each clip must find each other among the batch (NT-Xent loss, Chen et al. 2020). The
augmentations decide what the embedding learns to ignore, so they are the ones that leave a
sound's identity alone:

- random time crop (two different stretches of the same clip),
- mixing with another clip of the batch, quieter by a random amount (in the power domain),
- additive noise at a random SNR (in the power domain),
- a random gain in dB,
- time and frequency masking (SpecAugment) after normalisation.

The network (trunk + projection head) is ``tokenlm.models.simclr.SimCLRModel``; the
embedding probed afterwards is the trunk's pooled output, *before* the projection head.
Training runs on the shared loop, one epoch a pass over the clips.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tokenlm.baselines.cnn import fit_length, random_crops
from tokenlm.models.simclr import SimCLRModel
from tokenlm.training import DistContext, EpochBatches, TrainConfig, checkpoint_folder
from tokenlm.training import train as train_loop

__all__ = ["AugmentConfig", "SimCLRConfig", "augment", "nt_xent", "train_simclr", "view_crops"]

_DB = 10.0 / math.log(10.0)  # dB per neper of power: 10*log10(p) = _DB * ln(p)


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation; a probability of 0 turns one off."""

    mix_prob: float = 0.5
    mix_attenuation_db: tuple[float, float] = (6.0, 20.0)  # how much quieter the other clip is
    noise_prob: float = 0.5
    noise_snr_db: tuple[float, float] = (10.0, 40.0)  # relative to the clip's mean level
    gain_db: float = 6.0  # uniform in [-gain_db, gain_db]
    time_mask_frac: float = 0.2  # longest time mask, as a fraction of the crop
    freq_mask_frac: float = 0.2  # tallest frequency mask, as a fraction of n_mels
    masks: int = 1  # masks of each kind per view


@dataclass(frozen=True)
class SimCLRConfig:
    """Contrastive training of the trunk (``projection_dim`` sizes SimCLRModel's head)."""

    crop_frames: int = 100
    batch_size: int = 64
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    projection_dim: int = 128
    seed: int = 0
    # The two views' crops: None draws them independently anywhere in the clip (the reference);
    # N starts the second within N frames of the first. Far-apart crops of a song or a sentence
    # hold different notes and words, so independent crops teach the trunk to ignore pitch.
    view_offset_frames: int | None = None

    def key(self) -> dict:
        """The settings as a stage records them; view_offset_frames only when set (no rerun of
        SimCLRs trained before it existed)."""
        out = asdict(self)
        if self.view_offset_frames is None:
            del out["view_offset_frames"]
        return out


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Normalised-temperature cross-entropy over 2B views; row i's positive is its other view.

    z1, z2: (B, D) projections of the two views of the same B clips. Each view is classified
    among the 2B - 1 others by cosine similarity / temperature.
    """
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)]).to(z.device)
    return F.cross_entropy(logits, targets)


def augment(
    crops_db: Tensor, mean: Tensor, std: Tensor, config: AugmentConfig, generator: torch.Generator
) -> Tensor:
    """One augmented view of a batch of log-mel crops.

    crops_db: (B, 1, F, T) log-mel in dB (un-normalised, so gain and mixing are physical);
    mean, std: (F,) the train split's normalisation. Returns normalised (B, 1, F, T).
    """
    x = crops_db
    batch = x.shape[0]
    if batch > 1 and config.mix_prob > 0:
        # Partner: another clip of the batch (a random non-zero shift never pairs a clip with itself).
        shift = int(torch.randint(1, batch, (1,), generator=generator))
        partner = x.roll(shift, dims=0)
        attenuation = _uniform((batch, 1, 1, 1), *config.mix_attenuation_db, generator)
        mixed = _power_add(x, partner - attenuation)
        x = torch.where(_chance((batch, 1, 1, 1), config.mix_prob, generator), mixed, x)
    if config.noise_prob > 0:
        level = x.mean(dim=(2, 3), keepdim=True) - _uniform((batch, 1, 1, 1), *config.noise_snr_db, generator)
        # Noise power fluctuates around its level; ~5.6 dB is the spread of a chi-square(2) in dB.
        noise = level + 5.6 * torch.randn(x.shape, generator=generator)
        noisy = _power_add(x, noise)
        x = torch.where(_chance((batch, 1, 1, 1), config.noise_prob, generator), noisy, x)
    x = x + _uniform((batch, 1, 1, 1), -config.gain_db, config.gain_db, generator)
    x = (x - mean.view(1, 1, -1, 1)) / std.view(1, 1, -1, 1)
    for _ in range(config.masks):
        x = _mask(x, axis=3, longest=int(config.time_mask_frac * x.shape[3]), generator=generator)
        x = _mask(x, axis=2, longest=int(config.freq_mask_frac * x.shape[2]), generator=generator)
    return x


def train_simclr(
    model: SimCLRModel,
    clips_db: list[np.ndarray],
    mean: np.ndarray,
    std: np.ndarray,
    config: SimCLRConfig,
    augment_config: AugmentConfig = AugmentConfig(),
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    work_dir: Path | None = None,
    callbacks: Iterable[Callable[[int, dict], None]] = (),
) -> dict:
    """Train ``model`` with NT-Xent on two views of each clip (T, F) in dB; no labels seen.

    Checkpoints go to ``work_dir`` (a rerun resumes there) or, without one, a temporary
    folder; ``callbacks`` are the training loop's (``f(step, record)`` after every step).
    Returns the loss history and wall time; ``model`` ends in eval mode.
    """
    if len(clips_db) < 2:
        raise ValueError("SimCLR needs at least two training clips (the others are its negatives)")
    mean_t = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
    std_t = torch.as_tensor(np.asarray(std), dtype=torch.float32)

    def views(rng, indices):
        batch = [clips_db[i] for i in indices]
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))  # the step's augmentations
        # Two crops: the views see different stretches of the clip (near each other with
        # view_offset_frames), each augmented on its own.
        return tuple(augment(crops, mean_t, std_t, augment_config, generator)
                     for crops in view_crops(batch, config.crop_frames, config.view_offset_frames, rng))

    # A lone clip has no negatives: an epoch's single last clip waits for the next shuffle.
    data = EpochBatches(len(clips_db), config.batch_size, views, min_batch=2)
    loop = TrainConfig.for_epochs(data, config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                                  seed=config.seed)
    with checkpoint_folder(work_dir) as folder:
        result = train_loop(model, loop, folder, loss_fn=lambda m, v: nt_xent(m(v[0]), m(v[1]), config.temperature),
                            train_batch=data, dist=DistContext.single(device), progress=progress, callbacks=callbacks,
                            desc="simclr")
    history = [{"epoch": h["step"] // data.steps_per_epoch, "train_loss": h["train_loss"]} for h in result.history]
    return {"history": history, "epochs_run": len(history), "train_seconds": result.elapsed_s}


def view_crops(clips: list[np.ndarray], frames: int, max_offset: int | None,
               rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Two ``frames``-long crops per clip (T, F) -> two (B, 1, F, frames) batches: independent
    (``max_offset`` None), or the second starting within ``max_offset`` frames of the first."""
    if max_offset is None:
        return random_crops(clips, frames, rng), random_crops(clips, frames, rng)
    firsts, seconds = [], []
    for clip in clips:
        clip = fit_length(clip, frames)
        last = len(clip) - frames
        start = int(rng.integers(0, last + 1))
        other = int(np.clip(start + rng.integers(-max_offset, max_offset + 1), 0, last))
        firsts.append(clip[start:start + frames])
        seconds.append(clip[other:other + frames])
    return tuple(torch.from_numpy(np.stack(c).astype(np.float32)).transpose(1, 2).unsqueeze(1)
                 for c in (firsts, seconds))


# ---- helpers ------------------------------------------------------------------------


def _power_add(a_db: Tensor, b_db: Tensor) -> Tensor:
    """dB of the summed powers: 10*log10(10^(a/10) + 10^(b/10)), computed stably."""
    return _DB * torch.logaddexp(a_db / _DB, b_db / _DB)


def _uniform(shape, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _chance(shape, probability: float, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator) < probability


def _mask(x: Tensor, axis: int, longest: int, generator: torch.Generator) -> Tensor:
    """Zero (= the train mean after normalisation) a random band of up to ``longest`` along ``axis``."""
    if longest < 1:
        return x
    batch, size = x.shape[0], x.shape[axis]
    width = torch.randint(0, longest + 1, (batch,), generator=generator)  # (B,)
    start = (torch.rand(batch, generator=generator) * (size - width + 1)).long()  # (B,)
    position = torch.arange(size)  # (size,)
    band = (position[None] >= start[:, None]) & (position[None] < (start + width)[:, None])  # (B, size)
    shape = [batch, 1, 1, 1]
    shape[axis] = size
    return x.masked_fill(band.view(shape).to(x.device), 0.0)
