"""Fitting a tokenizer: the patches it learns from, the autoencoder's training on the shared
loop (tokenlm.training), and the reconstruction and codebook figures of its metrics.json.
The stages that call these (RUN/tokenizer, RUN/tokenizer/k{K}) live in tokenlm.pipeline.tokenize.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from tokenlm.data.features import FeatureConfig
from tokenlm.data.store import RaggedSplit
from tokenlm.tokenizer.codebook import code_statistics
from tokenlm.tokenizer.quantizers import Quantizer, bits_per_second
from tokenlm.tokenizer.tokenizer import AutoencoderTraining, PatchCoder
from tokenlm.training import DistContext, EpochBatches, TrainConfig
from tokenlm.training import train as train_loop

RECON_PATCHES = 20000  # patches the codebook's reconstruction figures are measured on


class PatchSampler:
    """Normalised patches of one split, gathered by patch number.

    Patches are numbered in the store's order (clip by clip, start by start); ``population``
    is how many the split has. Without a ``limit`` (or when the split has no more patches than
    it), the split's frames are held in memory as float16 (2 bytes a value: an 8-hour train
    split of 64-bin frames is ~370 MB), since random patch gathers from a memmap cost more
    than the training step itself. With a ``limit``, a seeded sample of that many patches
    (``numbers``: sorted, drawn as ``np.sort(default_rng(seed).choice(population, limit))``, as
    the codebook's and the metrics' subsamples are drawn) is read from the store alone, so
    memory is the sample's whatever the split's size. Patches never cross a clip boundary;
    clips shorter than a patch are left out.
    """

    def __init__(self, feats_dir: Path, split: str, features: FeatureConfig, coder: PatchCoder,
                 limit: int | None = None, seed: int = 0):
        store = RaggedSplit(feats_dir, split, "float16", width=features.n_mels)
        self.coder = coder
        self.patch_frames = features.patch_frames
        lengths = np.asarray(store.lengths)
        counts = np.where(lengths >= self.patch_frames, (lengths - self.patch_frames) // features.patch_step + 1, 0)
        ends = np.cumsum(counts)
        self.population = int(ends[-1]) if len(ends) else 0

        def frame_starts(numbers: np.ndarray) -> np.ndarray:
            clip = np.searchsorted(ends, numbers, side="right")
            return np.asarray(store.offsets)[clip] + (numbers - (ends[clip] - counts[clip])) * features.patch_step

        if limit is None or self.population <= limit:
            self.numbers = np.arange(self.population)
            self.frames = torch.from_numpy(np.array(store.data, dtype=np.float16))  # (total frames, M)
            self.starts = torch.from_numpy(frame_starts(self.numbers).astype(np.int64))
        else:
            self.numbers = np.sort(np.random.default_rng(seed).choice(self.population, limit, replace=False))
            patches = gather_patches(store, frame_starts(self.numbers), self.patch_frames)  # (n, P, M)
            self.frames = torch.from_numpy(patches.reshape(-1, features.n_mels))
            self.starts = torch.arange(limit, dtype=torch.long) * self.patch_frames

    def __len__(self) -> int:
        return len(self.starts)

    def get(self, indices) -> torch.Tensor:
        """Normalised patches (B, P * M) for patch numbers ``indices``."""
        frame_idx = self.starts[torch.as_tensor(indices)][:, None] + torch.arange(self.patch_frames)  # (B, P)
        frames = self.frames[frame_idx].to(self.coder.mean.device, torch.float32)  # (B, P, M)
        normalised = (frames - self.coder.mean) / self.coder.std
        return normalised.reshape(len(frame_idx), -1)


def gather_patches(store: RaggedSplit, frame_starts: np.ndarray, patch_frames: int,
                   window: int = 1 << 16) -> np.ndarray:
    """The patches starting at ``frame_starts`` (sorted), (n, patch_frames, width), read from
    the store a window of frames at a time by file reads (``RaggedSplit.read``): memory is the
    patches' and one window's, whatever the store's size."""
    out = np.empty((len(frame_starts), patch_frames, store.width), dtype=np.float16)
    i = 0
    while i < len(frame_starts):
        low = int(frame_starts[i])
        j = int(np.searchsorted(frame_starts, low + window, side="left"))
        block = store.read(low, int(frame_starts[j - 1]) + patch_frames)
        out[i:j] = block[(frame_starts[i:j] - low)[:, None] + np.arange(patch_frames)]
        i = j
    return out


def fit_autoencoder(coder: PatchCoder, train: PatchSampler, val: PatchSampler, cfg: AutoencoderTraining,
                     device: torch.device, progress: bool, work_dir: Path, callbacks=()) -> dict:
    """MSE on normalised patches through the shared training loop: AdamW at a constant
    learning rate, one evaluation per epoch (MSE on val, or on the train split when val is
    empty), early stopping after ``patience`` epochs without improvement, the best epoch's
    weights kept. Checkpoints in ``work_dir``, so an interrupted stage resumes; ``callbacks``
    are the training loop's (``f(step, record)`` after every step)."""
    model = coder.autoencoder
    data = EpochBatches(len(train), cfg.batch_size, lambda rng, indices: train.get(indices))
    epoch = data.steps_per_epoch
    held_out = val if len(val) else train
    held_out_idx = _subsample(len(held_out), cfg.max_val_patches, cfg.seed)
    loop = TrainConfig.for_epochs(data, cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, patience=cfg.patience,
                                  seed=cfg.seed)
    result = train_loop(model, loop, work_dir,
                        loss_fn=lambda m, batch: torch.nn.functional.mse_loss(m(batch), batch),
                        train_batch=data,
                        evaluate=lambda m: {"val_mse": _mse(m, held_out, held_out_idx, cfg.batch_size)},
                        monitor="val_mse", dist=DistContext.single(device), progress=progress,
                        callbacks=callbacks, desc="autoencoder")
    history = [{"epoch": h["step"] // epoch, "train_mse": h["train_loss"], "val_mse": h["val_mse"]}
               for h in result.history]
    return {"epochs_run": len(history), "best_epoch": result.best_step // epoch, "best_val_mse": result.best_value,
            "history": history}


@torch.no_grad()
def _mse(model, sampler: PatchSampler, indices: np.ndarray, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(indices), batch_size * 8):
        batch = sampler.get(indices[start:start + batch_size * 8])
        total += torch.nn.functional.mse_loss(model(batch), batch, reduction="sum").item()
    return total / (len(indices) * sampler.coder.features.patch_dim)


@torch.no_grad()
def reconstruction_metrics(coder: PatchCoder, sampler: PatchSampler, limit: int, seed: int,
                           centroids: np.ndarray | Quantizer | None = None) -> dict:
    """Log-mel reconstruction error in dB (RMSE after de-normalising) and as a fraction of the
    normalised patch variance; through the codebook (a (K, d) array or a Quantizer) when
    ``centroids`` are given."""
    idx = _subsample(len(sampler), limit, seed)
    squared_db = squared_norm = variance_sum = 0.0
    quantizer = centroids if centroids is None or isinstance(centroids, Quantizer) else Quantizer(centroids, "single")
    for start in range(0, len(idx), 8192):
        patches = sampler.get(idx[start:start + 8192])  # (B, P*M) normalised
        z = coder.autoencoder.encode(patches)
        if quantizer is not None:
            z = torch.from_numpy(quantizer.quantise(z.cpu().numpy())).to(patches.device)
        recon = coder.autoencoder.decode(z)
        std = coder.std.repeat(coder.features.patch_frames)  # de-normalise: error in dB
        squared_db += ((recon - patches) * std).square().sum().item()
        squared_norm += (recon - patches).square().sum().item()
        variance_sum += (patches - patches.mean(0)).square().sum().item()
    n = len(idx) * coder.features.patch_dim
    return {"recon_rmse_db": math.sqrt(squared_db / n), "recon_relative_mse": squared_norm / max(variance_sum, 1e-12),
            "recon_patches": len(idx)}


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


@torch.no_grad()
def bottlenecks(coder: PatchCoder, sampler: PatchSampler, batch: int = 16384) -> np.ndarray:
    parts = [coder.autoencoder.encode(sampler.get(np.arange(s, min(s + batch, len(sampler))))).cpu().numpy()
             for s in range(0, len(sampler), batch)]
    return np.concatenate(parts).astype(np.float32)


def codebook_metrics(coder: PatchCoder, centroids: np.ndarray | Quantizer, train_vectors: np.ndarray,
                     train: PatchSampler, val: PatchSampler) -> dict:
    """Quantisation error, code usage and reconstruction through the codebook. With several
    codes per patch, usage is level 0's (the reference codebook's) plus each level's entropy
    and perplexity under ``levels_usage``; ``bits_per_second`` is then the sum of the levels'
    entropy rates, and ``nominal_bits_per_second`` is levels x log2 K x code rate."""
    quantizer = centroids if isinstance(centroids, Quantizer) else Quantizer(centroids, "single")
    codes, dists = quantizer.assign(train_vectors)
    variance = float(train_vectors.var(axis=0).sum())
    rate = coder.features.code_rate
    per_level = [code_statistics(codes[:, level], quantizer.codebook_size, rate) for level in range(quantizer.levels)]
    usage = dict(per_level[0])
    extra = {}
    if quantizer.levels > 1:
        usage["bits_per_second"] = sum(u["bits_per_second"] for u in per_level)
        extra["levels_usage"] = [{k: u[k] for k in ("used_codes", "perplexity", "entropy_bits")} for u in per_level]
    eval_split = val if len(val) else train
    quantised = reconstruction_metrics(coder, eval_split, RECON_PATCHES, 0, quantizer)
    unquantised = reconstruction_metrics(coder, eval_split, RECON_PATCHES, 0)
    return {
        "k": quantizer.codebook_size,
        "quantizer": quantizer.kind,
        "levels": quantizer.levels,
        "nominal_bits_per_second": bits_per_second(quantizer.codebook_size, quantizer.levels, rate),
        **extra,
        "inertia": float(dists.mean()),  # mean squared distance to the nearest centroid (train)
        "relative_quantisation_error": float(dists.mean()) / max(variance, 1e-12),
        **usage,  # on the k-means sample (usage_sample of the split's population_patches)
        "usage_sample": int(len(train_vectors)), "population_patches": int(train.population),
        "recon_rmse_db": quantised["recon_rmse_db"],
        "recon_relative_mse": quantised["recon_relative_mse"],
        "autoencoder_recon_rmse_db": unquantised["recon_rmse_db"],
        "code_rate": coder.features.code_rate,
    }
