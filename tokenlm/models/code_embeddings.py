"""An LM that starts from what the codes mean (``lm.embeddings: centroids``).

A random embedding table knows nothing of which codes sound alike, and on small corpora it
hardly learns it: the probe then reads a worse representation from the LM's layer 0 than from
the codes' own centroids. Here code k's input embedding starts as its k-means centroid (the
autoencoder bottleneck it stands for), centred and mapped into the model's width by a fixed
seeded projection with orthonormal columns, so distances between codes are kept exactly (up
to one scale). The table is then rescaled to GPT-2's initial spread (std 0.02) so training
behaves as with a random table. The output head is untied (its own random matrix): a tied head
would start by predicting that a code follows itself and its neighbours.

Before training, a linear probe on layer 0 pooled over a clip therefore reads the same
information as a probe on the clip's quantised bottleneck (the centroids of its codes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokenlm.core.errors import ArtifactError
from tokenlm.run.rundir import CODEBOOK, codebook_dir

__all__ = ["EMBEDDINGS", "centroid_projection", "init_from_centroids", "codebook_centroids"]

EMBEDDINGS = ("random", "centroids")
INIT_STD = 0.02  # GPT-2's initial spread of its embedding table


def centroid_projection(dim: int, width: int, seed: int = 0) -> np.ndarray:
    """(dim, width) matrix with orthonormal rows (dim <= width): x -> x @ P keeps distances.
    A wider bottleneck than the model (dim > width) gets a scaled Gaussian map instead."""
    rng = np.random.default_rng([seed, 21])
    gaussian = rng.standard_normal((width, dim))
    if dim > width:
        return (gaussian / np.sqrt(width)).T
    q, r = np.linalg.qr(gaussian)  # q: (width, dim) orthonormal columns
    return (q * np.sign(np.diag(r))).T  # signs fixed: the same matrix on every platform


def centroid_embeddings(centroids: np.ndarray, width: int, seed: int = 0) -> np.ndarray:
    """(K, width) embeddings: centred centroids projected, rescaled to std ``INIT_STD``."""
    centred = np.asarray(centroids, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    table = centred @ centroid_projection(centred.shape[1], width, seed)
    spread = table.std()
    return (table * (INIT_STD / spread if spread > 0 else 1.0)).astype(np.float32)


@torch.no_grad()
def init_from_centroids(model, centroids: np.ndarray, seed: int = 0) -> None:
    """Set the first K rows of ``model``'s input embedding (a GPT2LMHeadModel with untied
    head) from the K centroids; special tokens keep their random rows."""
    if model.config.tie_word_embeddings:
        raise ValueError("centroid embeddings need an untied output head (build with embeddings='centroids')")
    wte = model.transformer.wte.weight
    table = centroid_embeddings(centroids, wte.shape[1], seed)
    if len(table) >= wte.shape[0]:
        raise ArtifactError(f"{len(table)} centroids do not fit an LM vocabulary of {wte.shape[0]} ids")
    wte[: len(table)] = torch.from_numpy(table).to(wte.device, wte.dtype)


def codebook_centroids(tokenizer_dir: str | Path | None, codebook_size: int) -> np.ndarray:
    """The (K, d) centroids of the tokenizer that made the codes; a clear error when absent."""
    path = codebook_dir(tokenizer_dir, codebook_size) / CODEBOOK if tokenizer_dir else None
    if path is None or not path.is_file():
        raise ArtifactError(f"lm.embeddings centroids needs the codebook the codes came from, not found at "
                            f"{path or 'an unnamed tokenizer'} (train with lm.embeddings random)")
    centroids = np.load(path, allow_pickle=False)
    if centroids.ndim != 2 or len(centroids) != codebook_size or not np.isfinite(centroids).all():
        raise ArtifactError(f"{path}: expected {codebook_size} finite centroids, got shape {centroids.shape}")
    return centroids
