"""The tokenizer's side of a pretrained folder (``tokenlm publish``; tokenlm.pipeline.pretrained
writes the whole folder): the folder's format, its file check, and loading its tokenizer alone,
from a folder or a Hugging Face Hub id. Here, below the LM and the vocoder, so that encoding
with a published tokenizer needs neither."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.fileio import read_json, sha256_file
from tokenlm.tokenizer.tokenizer import AudioTokenizer, load_patch_coder

FORMAT = "tokenlm-pretrained"
FORMAT_VERSION = 1
MANIFEST = "tokenlm.json"
CODEBOOK_WEIGHTS = "codebook.safetensors"  # {"centroids": (K, bottleneck) float32}


def load_tokenizer(path: str | Path, codebook_size: int | None = None, device=None) -> AudioTokenizer:
    """Any trained tokenizer: RUN/tokenizer (or RUN/tokenizer/k{K}) or a pretrained folder."""
    path = Path(path)
    if (path / MANIFEST).is_file() or (path / CODEBOOK_WEIGHTS).is_file():
        return load_pretrained_tokenizer(path, codebook_size, device)
    return AudioTokenizer.load(path, codebook_size, device)


def tokenizer_from_pretrained(name_or_path: str | Path, device=None, revision: str | None = None) -> AudioTokenizer:
    """The tokenizer of a pretrained folder or Hub id (``owner/name``; needs huggingface_hub)."""
    directory = Path(name_or_path)
    if not directory.is_dir():
        directory = download(str(name_or_path), revision)
    return load_pretrained_tokenizer(directory, device=device)


def load_pretrained_tokenizer(path: Path, codebook_size: int | None = None, device=None) -> AudioTokenizer:
    """The tokenizer of a pretrained folder (``path`` the folder or its tokenizer/), for
    ``AudioTokenizer.load`` and ``tokenize --tokenizer``: its files checked, the LM and vocoder
    not loaded."""
    directory = path.parent if (path / CODEBOOK_WEIGHTS).is_file() else path
    manifest = check_folder(directory)
    if codebook_size is not None and codebook_size != manifest["codebook_size"]:
        raise ArtifactError(f"{directory} holds the codebook of K={manifest['codebook_size']}, not K={codebook_size}")
    coder = load_patch_coder(directory / "tokenizer")
    centroids = read_centroids(directory / "tokenizer" / CODEBOOK_WEIGHTS, coder.autoencoder.encoder[-1].out_features)
    tokenizer = AudioTokenizer(coder, centroids, {"tokenizer_hash": manifest.get("tokenizer_hash"),
                                                  "pretrained_dir": str(directory.resolve())})
    return tokenizer.to(device) if device is not None else tokenizer


def check_folder(directory: Path) -> dict:
    """tokenlm.json of a pretrained folder, with every file it lists there at its size and hash."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: not a tokenlm pretrained folder (no {MANIFEST}; write one with "
                            f"`tokenlm publish RUN --out DIR`)")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a tokenlm pretrained folder")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {manifest['format_version']} is newer than this tokenlm "
                            f"reads ({FORMAT_VERSION}): upgrade tokenlm")
    for name, record in manifest.get("files", {}).items():
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing from the pretrained folder")
        if file.stat().st_size != record["size"] or sha256_file(file) != record["sha256"]:
            raise ArtifactError(f"{file} is not the file the folder was saved with (size or hash differs)")
    return manifest


def is_pretrained_folder(directory: Path) -> bool:
    try:
        return read_json(directory / MANIFEST).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, ArtifactError):
        return False


def read_centroids(path: Path, bottleneck: int) -> np.ndarray:
    try:
        centroids = load_file(str(path))["centroids"].numpy()
    except Exception as err:  # truncated file, missing tensor
        if isinstance(err, MemoryError):
            raise
        raise ArtifactError(f"{path}: not a readable codebook ({str(err).splitlines()[0]})") from None
    if centroids.ndim != 2 or centroids.shape[1] != bottleneck or not np.isfinite(centroids).all():
        raise ArtifactError(f"{path}: centroids of shape {centroids.shape} do not fit a {bottleneck}-d bottleneck")
    return centroids


def hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("loading from or pushing to the Hugging Face Hub needs huggingface_hub: "
                          "pip install huggingface_hub") from None
    return huggingface_hub


def download(repo_id: str, revision: str | None) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise ArtifactError(f"{repo_id}: no such folder (and not a Hub id owner/name)")
    try:
        return Path(hub().snapshot_download(repo_id, revision=revision))
    except ConfigError:
        raise
    except Exception as err:  # offline, unknown repo, no access: one line
        raise ArtifactError(f"{repo_id}: cannot download from the Hub ({str(err).splitlines()[0]})") from None
