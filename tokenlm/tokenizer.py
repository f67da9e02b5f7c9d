"""AudioTokenizer: audio -> discrete codes, and codes -> log-mel frames.

    tok = AudioTokenizer.load("runs/demo/tokenizer")      # the run's current codebook
    codes = tok.encode(wav, sr)                            # LongTensor (N,), tok.code_rate codes/s
    log_mel = tok.decode(codes)                            # (N * patch_frames, n_mels) in dB

On disk: ``tokenizer/`` holds the feature config, normalisation statistics and autoencoder
(config.json, autoencoder.safetensors); ``tokenizer/k{K}/`` holds one codebook per size
(codebook.npy, config.json, metrics.json). Every codebook shares its folder's autoencoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tokenlm.artifacts import check_outputs, read_json, stage_key, write_json
from tokenlm.audio import prepare_waveform
from tokenlm.codebook import CodeAssigner
from tokenlm.config import to_dict
from tokenlm.errors import ArtifactError
from tokenlm.features import FeatureConfig, LogMel, patchify
from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
from tokenlm.rundir import AUTOENCODER_WEIGHTS, CODEBOOK, CONFIG, codebook_dir, codebook_sizes, current_codebook_size



@dataclass(frozen=True)
class AutoencoderTraining:
    """How the autoencoder is trained (MSE on normalised patches, AdamW, early stopping on val)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4  # epochs without val improvement before stopping
    max_val_patches: int = 20000
    seed: int = 0


@dataclass(frozen=True)
class TokenizerConfig:
    """The ``tokenizer:`` recipe section."""

    codebook_size: int = 256
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    training: AutoencoderTraining = field(default_factory=AutoencoderTraining)


class PatchCoder(torch.nn.Module):
    """Log-mel frames <-> normalised patches <-> bottleneck vectors; no codebook."""

    def __init__(self, features: FeatureConfig, norm_mean, norm_std, autoencoder: PatchAutoencoder):
        super().__init__()
        self.features = features
        self.log_mel = LogMel(features)
        self.register_buffer("mean", torch.as_tensor(norm_mean, dtype=torch.float32))  # (M,)
        self.register_buffer("std", torch.as_tensor(norm_std, dtype=torch.float32))  # (M,)
        self.autoencoder = autoencoder

    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        """(frames, M) dB -> normalised flattened patches (N, P * M)."""
        normalised = (frames.to(self.mean.device, torch.float32) - self.mean) / self.std
        patches, _ = patchify(normalised, self.features.patch_frames, self.features.patch_hop)
        return patches

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(frames, M) dB -> un-quantised bottleneck vectors (N, d)."""
        return self.autoencoder.encode(self.patches(frames))

    def frames_from_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Normalised patches (N, P * M) -> log-mel frames in dB (N * P, M)."""
        # (N, P * M) -> (N * P, M); not unpatchify(), whose reshape fails on zero patches
        frames = patches.reshape(-1, self.features.n_mels)
        return frames * self.std + self.mean


class AudioTokenizer:
    """Encodes audio to codes with a trained autoencoder + codebook. See the module docstring."""

    def __init__(self, coder: PatchCoder, centroids: np.ndarray, info: dict | None = None):
        self.coder = coder.eval()
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.assigner = CodeAssigner(self.centroids)
        self.info = info or {}

    # -- the contract every codec honours ------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.coder.features.sample_rate

    @property
    def code_rate(self) -> float:
        """Codes per second of audio (``frame_rate`` is log-mel frames per second)."""
        return self.coder.features.code_rate

    @property
    def codebook_size(self) -> int:
        """K: codes are integers in [0, K)."""
        return len(self.centroids)

    @property
    def patch_frames(self) -> int:
        return self.coder.features.patch_frames

    @property
    def samples_per_code(self) -> int:
        return self.coder.features.samples_per_code

    @property
    def device(self) -> torch.device:
        return self.coder.mean.device

    def to(self, device) -> "AudioTokenizer":
        self.coder.to(device)
        return self

    @torch.inference_mode()
    def encode(self, wav, sample_rate: int) -> torch.LongTensor:
        """Waveform (T,) or (T, C) at any sample rate -> codes (N,)."""
        wav = prepare_waveform(np.asarray(wav), sample_rate, self.sample_rate)
        frames = self.coder.log_mel(torch.from_numpy(wav).to(self.device))  # (frames, M)
        return self.encode_frames(frames)

    @torch.inference_mode()
    def encode_batch(self, wavs: list, sample_rate: int) -> list[torch.LongTensor]:
        """Several clips at once: one autoencoder pass and one FAISS search for all patches."""
        frames = [self.coder.log_mel(torch.from_numpy(prepare_waveform(np.asarray(w), sample_rate, self.sample_rate)).to(self.device)) for w in wavs]
        return self.encode_frames_batch(frames)

    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor) -> torch.LongTensor:
        """Log-mel frames (frames, M) in dB -> codes (N,)."""
        return self.encode_frames_batch([frames])[0]

    @torch.inference_mode()
    def encode_frames_batch(self, frames_list: list[torch.Tensor]) -> list[torch.LongTensor]:
        z = torch.cat([self.coder.embed_frames(torch.as_tensor(f)) for f in frames_list])  # (sum N, d)
        codes, _ = self.assigner.assign(z.float().cpu().numpy())
        lengths = [_num_patches(len(f), self.coder.features) for f in frames_list]
        return list(torch.from_numpy(codes).split(lengths))

    @torch.inference_mode()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Log-mel frames (frames, M) in dB -> un-quantised bottleneck vectors (N, d)."""
        return self.coder.embed_frames(torch.as_tensor(frames))

    @torch.inference_mode()
    def decode(self, codes) -> torch.Tensor:
        """Codes (N,) -> log-mel frames (N * patch_frames, M) in dB: centroid -> decoder."""
        codes = torch.as_tensor(codes, dtype=torch.long).cpu()
        if len(codes) and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        z = torch.from_numpy(self.centroids)[codes].to(self.device)
        return self.coder.frames_from_patches(self.coder.autoencoder.decode(z))

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, codebook_size: int | None = None, device=None) -> "AudioTokenizer":
        """Load ``RUN/tokenizer`` (its current codebook, or ``codebook_size``) or ``RUN/tokenizer/k{K}``."""
        path = Path(path)
        if (path / CODEBOOK).is_file() and not (path / AUTOENCODER_WEIGHTS).is_file():
            codebook, path = path, path.parent
            coder = load_patch_coder(path)
        else:
            coder = load_patch_coder(path)  # first: "no trained tokenizer" says more than "which codebook?"
            codebook = codebook_dir(path, codebook_size or current_codebook_size(path))
        if not (codebook / CODEBOOK).is_file():
            have = ", ".join(codebook_dir(path, k).name for k in sorted(codebook_sizes(path), reverse=True)) or "none"
            raise ArtifactError(f"no codebook at {codebook} (this tokenizer has: {have})")
        centroids = np.load(codebook / CODEBOOK)
        bottleneck = coder.autoencoder.encoder[-1].out_features
        if centroids.ndim != 2 or centroids.shape[1] != bottleneck:
            raise ArtifactError(f"{codebook / CODEBOOK}: shape {centroids.shape} does not fit a {bottleneck}-d bottleneck")
        check_outputs(codebook)  # missing or truncated files: one line naming the file
        info = {"tokenizer_dir": str(path), "codebook_dir": str(codebook), "tokenizer_hash": _key_or_none(codebook)}
        tokenizer = cls(coder, centroids, info)
        return tokenizer.to(device) if device is not None else tokenizer


def save_patch_coder(coder: PatchCoder, directory: Path, extra: dict | None = None) -> None:
    """config.json (features, normalisation, autoencoder sizes) + autoencoder.safetensors."""
    state = {k: v.contiguous() for k, v in coder.autoencoder.state_dict().items()}
    save_file(state, str(directory / AUTOENCODER_WEIGHTS))
    write_json(directory / CONFIG, {
        "features": to_dict(coder.features),
        "norm": {"mean": coder.mean.tolist(), "std": coder.std.tolist()},
        "autoencoder": to_dict(_autoencoder_config(coder.autoencoder)),
        "patch_dim": coder.features.patch_dim,
        **(extra or {}),
    })


def load_patch_coder(directory: str | Path) -> PatchCoder:
    directory = Path(directory)
    if not (directory / AUTOENCODER_WEIGHTS).is_file():
        raise ArtifactError(f"no trained tokenizer at {directory} (run `tokenlm tokenize` first)")
    check_outputs(directory)  # missing or truncated files: one line naming the file
    config = read_json(directory / CONFIG)
    features = FeatureConfig(**config["features"])
    ae_config = AutoencoderConfig(**{**config["autoencoder"], "hidden": tuple(config["autoencoder"]["hidden"])})
    autoencoder = PatchAutoencoder(features.patch_dim, ae_config)
    autoencoder.load_state_dict(load_file(str(directory / AUTOENCODER_WEIGHTS)))
    return PatchCoder(features, config["norm"]["mean"], config["norm"]["std"], autoencoder).eval()


def _autoencoder_config(autoencoder: PatchAutoencoder) -> AutoencoderConfig:
    linears = [m for m in autoencoder.encoder if isinstance(m, torch.nn.Linear)]
    dropouts = [m.p for m in autoencoder.encoder if isinstance(m, torch.nn.Dropout)]
    return AutoencoderConfig(hidden=(linears[0].out_features, linears[1].out_features),
                             bottleneck=linears[2].out_features, dropout=dropouts[0] if dropouts else 0.0)


def _num_patches(n_frames: int, features: FeatureConfig) -> int:
    n_frames = max(n_frames, features.patch_frames)  # short clips are padded to one patch
    return 1 + (n_frames - features.patch_frames) // features.patch_step


def _key_or_none(directory: Path):
    try:
        return stage_key(directory)
    except ArtifactError:
        return None
