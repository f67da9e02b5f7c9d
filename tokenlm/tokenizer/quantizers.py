"""Several codes per patch: residual and product quantisers built on the one-codebook k-means
of ``tokenlm.tokenizer.codebook`` (FAISS, fitted and searched the same way).

- ``single`` (the reference): one K-entry codebook, one code per patch;
- ``residual`` (``tokenizer.levels: L``): level 1 is the single codebook; level l clusters
  what levels < l left (the bottleneck minus the sum of their centroids), so a patch is the
  sum of its L centroids and each level lowers the quantisation error (Jukebox/SoundStream's
  residual VQ, here fitted by k-means after the autoencoder instead of trained inside it);
- ``product`` (``tokenizer.groups: G``): the d-dim bottleneck is cut into G groups of d / G
  dimensions, each with its own K-entry codebook; a patch is its G centroids side by side.

Either way a patch is L codes in [0, K) (L = levels or groups): tokens store them as a
(patches, L) uint16 array, level (or group) l in column l; one code per patch stays the
(patches,) array it always was. On disk the codebook is ``codebook.npy``: (K, d) for one
code, (L, K, d) for residual levels, (L, K, d / L) for product groups (the shape says which).

Bits per second of audio: L x log2 K x code rate, the figure configurations are compared by.

Whitening (``tokenizer.whiten: true``): k-means then runs on the PCA-whitened bottleneck
(every principal direction at unit variance), so low-variance directions, which plain k-means
all but ignores, get their share of the centroids; codes are assigned there and reconstructed
back in the bottleneck's own space. Saved beside the codebook as ``whitening.npy``, (d + 1, d):
the mean, then the whitening matrix.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.tokenizer.codebook import CodeAssigner, CodebookConfig, fit_codebook

KINDS = ("single", "residual", "product")


def quantizer_kind(levels: int, groups: int) -> str:
    """The kind a ``tokenizer:`` section's ``levels`` and ``groups`` ask for."""
    for name, value in (("levels", levels), ("groups", groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"tokenizer.{name} must be an integer >= 1, got {value!r}")
    if levels > 1 and groups > 1:
        raise ConfigError("tokenizer.levels (residual) and tokenizer.groups (product) cannot both be > 1")
    return "residual" if levels > 1 else "product" if groups > 1 else "single"


def bits_per_second(codebook_size: int, levels: int, code_rate: float) -> float:
    """Bits of codes per second of audio: levels x log2 K x code rate (patches per second)."""
    return levels * math.log2(codebook_size) * code_rate


class Quantizer:
    """L codebooks (L, K, d_l) and the rule that combines them (``kind``); see the module
    docstring. ``assign`` gives codes, ``reconstruct`` the vector the codes stand for."""

    def __init__(self, codebooks: np.ndarray, kind: str, whitening: np.ndarray | None = None):
        codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        if kind not in KINDS:
            raise ConfigError(f"quantizer kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if codebooks.ndim == 2:
            codebooks = codebooks[None]
        if kind == "single" and len(codebooks) != 1:
            raise ConfigError(f"a single codebook has one level, got {len(codebooks)}")
        self.kind = kind
        self.codebooks = codebooks  # (L, K, d_l)
        self.assigners = [CodeAssigner(c) for c in codebooks]
        self.whitening = None if whitening is None else np.ascontiguousarray(whitening, dtype=np.float32)

    @property
    def levels(self) -> int:
        """Codes per patch (residual levels or product groups)."""
        return len(self.codebooks)

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    @property
    def dim(self) -> int:
        """The bottleneck width the quantiser reads."""
        return self.codebooks.shape[2] * (self.levels if self.kind == "product" else 1)

    def to_array(self) -> np.ndarray:
        """What codebook.npy holds: (K, d) for one code, else (L, K, d_l)."""
        return self.codebooks[0] if self.kind == "single" else self.codebooks

    @classmethod
    def from_array(cls, array: np.ndarray, bottleneck: int, where: str = "codebook") -> "Quantizer":
        """The quantiser of a codebook.npy array, its kind read off its shape."""
        if array.ndim == 2 and array.shape[1] == bottleneck:
            return cls(array, "single")
        if array.ndim == 3 and array.shape[0] > 1:
            if array.shape[2] == bottleneck:
                return cls(array, "residual")
            if array.shape[2] * array.shape[0] == bottleneck:
                return cls(array, "product")
        raise ArtifactError(f"{where}: shape {array.shape} does not fit a {bottleneck}-d bottleneck "
                            "(expected (K, d), (levels, K, d) or (groups, K, d / groups))")

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes (n, L) int64 and each vector's squared distance to its reconstruction (n,)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.whitening is not None:  # codes of the whitened vectors; distances in the bottleneck's space
            codes, _ = self._assign(whiten(vectors, self.whitening))
            return codes, np.square(self.reconstruct(codes) - vectors).sum(axis=1).astype(np.float32)
        return self._assign(vectors)

    def _assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = np.empty((len(vectors), self.levels), dtype=np.int64)
        if self.kind == "product":
            dists = np.zeros(len(vectors), dtype=np.float32)
            for g, (assigner, part) in enumerate(zip(self.assigners, self._groups(vectors))):
                codes[:, g], d = assigner.assign(part)
                dists += d
            return codes, dists
        residual = vectors
        for level, assigner in enumerate(self.assigners):
            codes[:, level], dists = assigner.assign(residual)
            if level + 1 < self.levels:  # what this level left, for the next
                residual = residual - self.codebooks[level][codes[:, level]]
        return codes, dists

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Codes (n, L) (or (n,) for one level) -> the vectors they stand for (n, d)."""
        codes = np.asarray(codes, dtype=np.int64)
        codes = codes[:, None] if codes.ndim == 1 else codes
        if codes.shape[1] != self.levels:
            raise ValueError(f"codes of {codes.shape[1]} levels for a quantiser of {self.levels}")
        parts = [self.codebooks[level][codes[:, level]] for level in range(self.levels)]
        if self.kind == "product":
            out = np.concatenate(parts, axis=1)
        else:
            out = np.sum(parts, axis=0, dtype=np.float32) if self.levels > 1 else parts[0]
        return out if self.whitening is None else unwhiten(out, self.whitening)

    def quantise(self, vectors: np.ndarray) -> np.ndarray:
        """Each vector replaced by its reconstruction through the codes (n, d)."""
        return self.reconstruct(self.assign(vectors)[0])

    def _groups(self, vectors: np.ndarray) -> list[np.ndarray]:
        width = self.codebooks.shape[2]
        return [np.ascontiguousarray(vectors[:, g * width:(g + 1) * width]) for g in range(self.levels)]


def fit_whitening(vectors: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """PCA whitening of ``vectors`` (n, d): (d + 1, d), the mean then W, so that
    (x - mean) @ W has identity covariance (directions of near-zero variance floored at eps)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    mean = vectors.mean(axis=0)
    values, vecs = np.linalg.eigh(np.cov(vectors - mean, rowvar=False))
    transform = vecs / np.sqrt(np.maximum(values, eps * max(values.max(), eps)))
    return np.concatenate([mean[None], transform]).astype(np.float32)


def whiten(vectors: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((vectors - whitening[0]) @ whitening[1:], dtype=np.float32)


def unwhiten(vectors: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(whitening[1:].astype(np.float64))
    return (vectors @ inverse + whitening[0]).astype(np.float32)


def fit_quantizer(vectors: np.ndarray, k: int, kind: str, levels: int,
                  config: CodebookConfig = CodebookConfig(), whitened: bool = False) -> tuple[Quantizer, dict]:
    """``_fit_quantizer`` on the vectors as they are, or PCA-whitened first (``whitened``)."""
    if not whitened:
        return _fit_quantizer(vectors, k, kind, levels, config)
    whitening = fit_whitening(vectors)
    quantizer, record = _fit_quantizer(whiten(vectors, whitening), k, kind, levels, config)
    return Quantizer(quantizer.codebooks, kind, whitening), {**record, "whitened": True}


def _fit_quantizer(vectors: np.ndarray, k: int, kind: str, levels: int,
                   config: CodebookConfig = CodebookConfig()) -> tuple[Quantizer, dict]:
    """Fit a quantiser of ``kind`` with ``levels`` codes per patch on ``vectors`` (n, d).

    Level (group) 0 is fitted exactly as the single codebook is (same seed, same sample), so
    a residual quantiser's first level is the reference codebook; later levels take seed +
    level so their k-means++ draws differ. Returns the quantiser and fit_codebook's record
    (of level 0, with every level's objective)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "single":
        centroids, record = fit_codebook(vectors, k, config)
        return Quantizer(centroids, "single"), record
    if kind == "product" and vectors.shape[1] % levels:
        raise ConfigError(f"tokenizer.groups={levels} must divide the bottleneck width {vectors.shape[1]}")
    codebooks, objectives, record = [], [], {}
    residual = vectors
    width = vectors.shape[1] // levels
    for level in range(levels):
        level_config = replace(config, seed=config.seed + level)
        data = residual if kind == "residual" else np.ascontiguousarray(vectors[:, level * width:(level + 1) * width])
        centroids, level_record = fit_codebook(data, k, level_config)
        if level == 0:
            record = level_record
        objectives.append(level_record["train_objective"])
        codebooks.append(centroids)
        if kind == "residual" and level + 1 < levels:
            codes, _ = CodeAssigner(centroids).assign(residual)
            residual = residual - centroids[codes]
    record = {**record, "quantizer": kind, "levels": levels, "level_objectives": objectives}
    return Quantizer(np.stack(codebooks), kind), record
