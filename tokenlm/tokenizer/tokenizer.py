"""AudioTokenizer: audio -> discrete codes, and codes -> log-mel frames.

    tok = AudioTokenizer.load("runs/demo/tokenizer")      # the run's current codebook
    codes = tok.encode(wav, sr)                            # LongTensor (N,), tok.code_rate codes/s
                                                           # (N, L) with L levels (tokenlm.tokenizer.quantizers)
    log_mel = tok.decode(codes)                            # (N * patch_frames, n_mels) in dB

On disk: ``tokenizer/`` holds the feature config, normalisation statistics and autoencoder
(config.json, autoencoder.safetensors); ``tokenizer/k{K}/`` holds one codebook per size
(codebook.npy, config.json, metrics.json). Every codebook shares its folder's autoencoder.
A codebook may give several codes per patch (residual levels or product groups,
``tokenlm.tokenizer.quantizers``): codebook.npy is then (L, K, d_l) and codes are (N, L).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tokenlm.core.config import build, to_dict
from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.fileio import read_json, write_json
from tokenlm.data.audio import prepare_waveform
from tokenlm.data.audio_layout import as_samples_by_channels
from tokenlm.data.features import FeatureConfig, LogMel, patchify
from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
from tokenlm.run.artifacts import check_outputs, stage_key
from tokenlm.run.rundir import (
    AUTOENCODER_WEIGHTS,
    CODEBOOK,
    CONFIG,
    META,
    STAGE_FILE,
    WHITENING,
    RunDir,
    codebook_dir,
    codebook_sizes,
    current_codebook_size,
    is_finished,
    read_feature_meta,
)
from tokenlm.tokenizer.codebook import check_codebook_size
from tokenlm.tokenizer.quantizers import Quantizer, quantizer_kind


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
    # Train on a seeded sample of at most this many train patches, read from the store alone
    # (None: every patch, the split's frames in memory): what keeps the fit's memory and
    # epoch time flat as the corpus grows (docs/scaling.md). 20 patches a second of audio
    # at the demo's features: 72,000 is an hour.
    max_patches: int | None = None


@dataclass(frozen=True)
class TokenizerConfig:
    """The ``tokenizer:`` recipe section."""

    codebook_size: int = 256
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    training: AutoencoderTraining = field(default_factory=AutoencoderTraining)
    # Codes per patch (tokenlm.tokenizer.quantizers): ``levels`` residual k-means levels, or the
    # bottleneck cut into ``groups`` with a codebook each; 1 and 1 is one code per patch.
    levels: int = 1
    groups: int = 1
    whiten: bool = False  # k-means on the PCA-whitened bottleneck (tokenlm.tokenizer.quantizers)

    def __post_init__(self):
        check_codebook_size(self.codebook_size)  # before the autoencoder trains, not after
        quantizer_kind(self.levels, self.groups)  # both > 1: an error now, not after training
        if self.groups > 1 and self.autoencoder.bottleneck % self.groups:
            raise ConfigError(f"tokenizer.groups={self.groups} must divide the bottleneck width "
                              f"{self.autoencoder.bottleneck}")

    @property
    def quantizer(self) -> str:
        """single, residual or product."""
        return quantizer_kind(self.levels, self.groups)

    @property
    def codes_per_patch(self) -> int:
        return max(self.levels, self.groups)


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

    def __init__(self, coder: PatchCoder, centroids: np.ndarray | Quantizer, info: dict | None = None):
        self.coder = coder.eval()
        self.quantizer = centroids if isinstance(centroids, Quantizer) else Quantizer(centroids, "single")
        self.info = info or {}

    @property
    def centroids(self) -> np.ndarray:
        """The (K, d) codebook of a one-code-per-patch tokenizer."""
        if self.levels > 1:
            raise ConfigError(f"this tokenizer gives {self.levels} codes per patch ({self.quantizer.kind}): "
                              "it has no single (K, d) codebook")
        return self.quantizer.codebooks[0]

    @property
    def levels(self) -> int:
        """Codes per patch: 1, or the residual levels / product groups."""
        return self.quantizer.levels

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
        return self.quantizer.codebook_size

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
    def encode(self, wav, sample_rate: int, *, layout: str | None = None) -> torch.LongTensor:
        """Waveform (T,), (C, T) or (T, C), numpy or torch, at any sample rate -> codes (N,) of
        its channel mean. A 2-D shape whose layout cannot be told (both axes small) is refused
        in one line: say ``layout="channels_first"`` or ``"channels_last"``."""
        return self.encode_frames(self._log_mel(wav, sample_rate, layout))

    @torch.inference_mode()
    def encode_batch(self, wavs: list, sample_rate: int, *, layout: str | None = None) -> list[torch.LongTensor]:
        """Several clips at once: one autoencoder pass and one FAISS search for all patches."""
        return self.encode_frames_batch([self._log_mel(w, sample_rate, layout) for w in wavs])

    def _log_mel(self, wav, sample_rate: int, layout: str | None) -> torch.Tensor:
        """Any in-memory layout -> mono at ``sample_rate`` -> log-mel frames (frames, M)."""
        mono = prepare_waveform(as_samples_by_channels(wav, layout), sample_rate, self.sample_rate)
        return self.coder.log_mel(torch.from_numpy(mono).to(self.device))

    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor) -> torch.LongTensor:
        """Log-mel frames (frames, M) in dB -> codes (N,), or (N, L) with L levels."""
        return self.encode_frames_batch([frames])[0]

    @torch.inference_mode()
    def encode_frames_batch(self, frames_list: list[torch.Tensor]) -> list[torch.LongTensor]:
        z = torch.cat([self.coder.embed_frames(torch.as_tensor(f)) for f in frames_list])  # (sum N, d)
        codes, _ = self.quantizer.assign(z.float().cpu().numpy())  # (sum N, L)
        if self.levels == 1:
            codes = codes[:, 0]
        lengths = [_num_patches(len(f), self.coder.features) for f in frames_list]
        return list(torch.from_numpy(codes).split(lengths))

    @torch.inference_mode()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Log-mel frames (frames, M) in dB -> un-quantised bottleneck vectors (N, d)."""
        return self.coder.embed_frames(torch.as_tensor(frames))

    @torch.inference_mode()
    def quantise_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Log-mel frames (frames, M) in dB -> each patch's bottleneck replaced by what its
        codes stand for (centroid, or sum / concatenation of its levels'), (N, d)."""
        z = self.embed_frames(frames).float().cpu().numpy()
        return torch.from_numpy(self.quantizer.quantise(z))

    @torch.inference_mode()
    def decode(self, codes) -> torch.Tensor:
        """Codes (N,) (or (N, L) with L levels) -> log-mel frames (N * patch_frames, M) in dB:
        centroids -> decoder."""
        codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes,
                                dtype=torch.long).cpu()
        expected = (codes.ndim == 1) if self.levels == 1 else (codes.ndim == 2 and codes.shape[1] == self.levels)
        if not expected and not (self.levels == 1 and codes.ndim == 2 and codes.shape[1] == 1):
            raise ValueError(f"codes of shape {tuple(codes.shape)} for a tokenizer of {self.levels} code(s) per patch")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        z = torch.from_numpy(self.quantizer.reconstruct(codes.numpy())).to(self.device)
        return self.coder.frames_from_patches(self.coder.autoencoder.decode(z))

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, codebook_size: int | None = None, device=None) -> "AudioTokenizer":
        """Load ``RUN/tokenizer`` (its current codebook, or ``codebook_size``) or ``RUN/tokenizer/k{K}``
        (a pretrained folder: tokenlm.tokenizer.published.load_tokenizer)."""
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
        quantizer = load_codebook(codebook / CODEBOOK, coder.autoencoder.encoder[-1].out_features)
        if (codebook / WHITENING).is_file():
            quantizer = Quantizer(quantizer.codebooks, quantizer.kind, load_whitening(codebook / WHITENING, quantizer.dim))
        check_outputs(codebook)  # missing or truncated files: one line naming the file
        info = {"tokenizer_dir": str(path.resolve()), "codebook_dir": str(codebook.resolve()),
                "tokenizer_hash": _key_or_none(codebook)}
        tokenizer = cls(coder, quantizer, info)
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
    """A tokenizer's autoencoder with its features and normalisation, each checked: anything
    that does not fit is an ArtifactError naming the file and the reason."""
    directory = Path(directory)
    weights = directory / AUTOENCODER_WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"no trained tokenizer at {directory} (run `tokenlm tokenize` first)")
    check_outputs(directory)  # missing or truncated files: one line naming the file
    config_path = directory / CONFIG
    try:
        features, mean, std, ae_config = _coder_config(read_json(config_path))
    except ConfigError as err:
        raise ArtifactError(f"{config_path}: {err}") from None
    _check_against_features(directory, features, mean, std)
    autoencoder = PatchAutoencoder(features.patch_dim, ae_config)
    try:
        state = load_file(str(weights))
        autoencoder.load_state_dict(state)
    except Exception as err:  # truncated file (SafetensorError), shapes or names that do not fit (RuntimeError)
        if isinstance(err, MemoryError):
            raise
        raise ArtifactError(f"{weights}: cannot load the autoencoder ({str(err).splitlines()[0]})") from None
    if not all(torch.isfinite(t).all() for t in state.values()):
        raise ArtifactError(f"{weights}: the autoencoder's weights are not finite (NaN or inf)")
    return PatchCoder(features, mean, std, autoencoder).eval()


def _coder_config(config) -> tuple[FeatureConfig, np.ndarray, np.ndarray, AutoencoderConfig]:
    """A tokenizer config.json's features, normalisation and autoencoder sizes, checked
    (known keys, types, values); a ConfigError says what is wrong."""
    sections = ("features", "norm", "autoencoder")
    missing = [name for name in sections if not isinstance(config, dict) or not isinstance(config.get(name), dict)]
    if missing:
        raise ConfigError(f"not a tokenizer config (no {', '.join(missing)} section)")
    features = build(FeatureConfig, config["features"], where="features")
    ae_config = build(AutoencoderConfig, config["autoencoder"], where="autoencoder")
    if config.get("patch_dim", features.patch_dim) != features.patch_dim:
        raise ConfigError(f"patch_dim {config['patch_dim']} but the features make patches of {features.patch_dim}")
    mean, std = (_per_mel_bin(config["norm"].get(name), features.n_mels, f"norm.{name}") for name in ("mean", "std"))
    if not (std > 0).all():
        raise ConfigError("norm.std has values <= 0")
    return features, mean, std, ae_config


def _per_mel_bin(values, n_mels: int, where: str) -> np.ndarray:
    """One finite number per mel bin, as float32."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a list of numbers") from None
    if array.shape != (n_mels,):
        raise ConfigError(f"{where} has shape {array.shape}, but there are {n_mels} mel bins")
    if not np.isfinite(array).all():
        raise ConfigError(f"{where} is not finite (NaN or inf)")
    return array


def _check_against_features(directory: Path, features: FeatureConfig, mean: np.ndarray, std: np.ndarray) -> None:
    """Inside a run, the tokenizer's features and normalisation must be those of the run's
    features it was trained on (same stage key): a changed sample rate would make codes of
    other sounds."""
    feats_dir = RunDir(directory.parent).features
    stage_path = directory / STAGE_FILE
    if not (is_finished(feats_dir) and stage_path.is_file()):
        return  # a tokenizer on its own: nothing to compare with
    trained_on = read_json(stage_path).get("inputs", {}).get("features")
    if trained_on is None or trained_on != _key_or_none(feats_dir):
        return  # the features were rebuilt since: they are not what it was trained on
    meta = read_feature_meta(feats_dir)
    differ = [f"{name} {getattr(features, name)!r} (features: {getattr(meta.config, name)!r})"
              for name in FeatureConfig.__dataclass_fields__ if getattr(features, name) != getattr(meta.config, name)]
    if not (np.allclose(mean, meta.norm_mean) and np.allclose(std, meta.norm_std)):
        differ.append("the normalisation statistics")
    if differ:
        raise ArtifactError(f"{directory / CONFIG} disagrees with the features it was trained on "
                            f"({feats_dir / META}): {', '.join(differ)}")


def load_codebook(path: Path, bottleneck: int) -> Quantizer:
    """codebook.npy: (K, bottleneck) finite floats, 2 <= K <= 65535 (or (L, K, d_l): several
    codes per patch, tokenlm.tokenizer.quantizers); else an ArtifactError."""
    try:
        centroids = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:  # empty or truncated file
        raise ArtifactError(f"{path}: not a readable codebook ({str(err).splitlines()[0] or type(err).__name__})") from None
    quantizer = Quantizer.from_array(centroids, bottleneck, where=str(path)) if centroids.ndim in (2, 3) else None
    if quantizer is None:
        raise ArtifactError(f"{path}: shape {centroids.shape} does not fit a {bottleneck}-d bottleneck")
    if not np.issubdtype(centroids.dtype, np.floating):
        raise ArtifactError(f"{path}: centroids of dtype {centroids.dtype}, expected float32")
    size = quantizer.codebook_size
    try:
        check_codebook_size(size)
    except ConfigError as err:
        raise ArtifactError(f"{path}: {size} centroids ({err})") from None
    expected = path.parent.name
    if expected.startswith("k") and expected[1:].isdigit() and int(expected[1:]) != size:
        raise ArtifactError(f"{path}: {size} centroids in the folder of K={expected[1:]}")
    if not np.isfinite(centroids).all():
        raise ArtifactError(f"{path}: centroids are not finite (NaN or inf)")
    return quantizer


def load_whitening(path: Path, bottleneck: int) -> np.ndarray:
    """whitening.npy: (d + 1, d) finite floats (the mean, then an invertible matrix)."""
    try:
        whitening = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise ArtifactError(f"{path}: not a readable whitening ({str(err).splitlines()[0] or type(err).__name__})") from None
    if whitening.shape != (bottleneck + 1, bottleneck) or not np.isfinite(whitening).all():
        raise ArtifactError(f"{path}: expected finite ({bottleneck + 1}, {bottleneck}), got {whitening.shape}")
    return whitening


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
