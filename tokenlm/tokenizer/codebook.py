"""The codebook: FAISS k-means on bottleneck vectors, nearest-centroid assignment, code statistics."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.tokenizer.faiss_runtime import blas_record, faiss, search_blocks

log = logging.getLogger(__name__)

# Codes are stored as uint16 (tokenlm.data.store), so a codebook has at most this many codes; fewer
# than two codes carry no information.
MIN_CODEBOOK_SIZE, MAX_CODEBOOK_SIZE = 2, 65535


class CodebookSizeError(ConfigError, ValueError):
    """A K that cannot be fit or stored. Also a ValueError, what fit_codebook always raised."""


def check_codebook_size(k) -> None:
    """A CodebookSizeError unless ``k`` is a codebook size codes can be stored for."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not MIN_CODEBOOK_SIZE <= k <= MAX_CODEBOOK_SIZE:
        raise CodebookSizeError(f"codebook size (-K) must be an integer from {MIN_CODEBOOK_SIZE} to "
                                f"{MAX_CODEBOOK_SIZE} (codes are stored as uint16), got {k!r}")


@dataclass(frozen=True)
class CodebookConfig:
    niter: int = 25
    points_per_centroid: int = 256  # train on at most K x this many vectors (seeded subsample)
    init: str = "kmeans++"  # "kmeans++" (scikit-learn's seeding) or "faiss" (random points)
    seed: int = 0
    gpu: str = "auto"  # "auto": FAISS GPU when faiss.get_num_gpus() > 0; "never"

    def __post_init__(self):
        if self.init not in ("kmeans++", "faiss"):
            raise ValueError(f"init must be 'kmeans++' or 'faiss', got {self.init!r}")


def fit_codebook(vectors: np.ndarray, k: int, config: CodebookConfig = CodebookConfig(),
                 population: int | None = None) -> tuple[np.ndarray, dict]:
    """K-means centroids (k, d) float32 of ``vectors`` (n, d), and a record of how they were fit.
    ``population``: ``vectors`` are already the seeded sample of that many (drawn as below,
    ``np.sort(default_rng(seed).choice(population, budget))``), taken as they are."""
    check_codebook_size(k)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if population is not None and population > n:
        if n != min(population, k * config.points_per_centroid):
            raise ValueError(f"a sample of {n} vectors of {population} is not the k-means budget")
        return _fit(vectors, vectors, population, k, config)
    return _fit(vectors, None, n, k, config)


def _fit(vectors: np.ndarray, sample: np.ndarray | None, n: int, k: int, config: CodebookConfig):
    d = vectors.shape[1]
    if n < k:
        raise CodebookSizeError(f"cannot fit {k} codes on {n} vectors (the train split's patches): "
                                f"use a K of at most {n}, or more training audio")
    if not np.isfinite(vectors).all():
        raise ArtifactError("the bottleneck vectors to fit the codebook on are not finite (NaN or inf): the "
                            "features or the autoencoder are broken; rebuild them")
    rng = np.random.default_rng(config.seed)
    budget = k * config.points_per_centroid
    if sample is None:
        sample = vectors if n <= budget else vectors[np.sort(rng.choice(n, budget, replace=False))]
    if len(sample) < n:
        log.info("k-means on a subsample of %d of %d vectors (%d per centroid)", len(sample), n, config.points_per_centroid)
    if n < 39 * k:  # FAISS's own threshold for a warning, said once here in words
        log.warning("only %.0f vectors per code for K=%d: the codebook may overfit", n / k, k)
    use_gpu = config.gpu == "auto" and faiss.get_num_gpus() > 0
    # The subsample is ours (seeded, logged): let FAISS use every point it is given.
    kmeans = faiss.Kmeans(d, k, niter=config.niter, seed=config.seed, gpu=use_gpu,
                          max_points_per_centroid=config.points_per_centroid + 1,
                          min_points_per_centroid=1, verbose=False)
    init = _kmeans_plus_plus(sample, k, config.seed) if config.init == "kmeans++" else None
    with search_blocks(k):
        kmeans.train(sample, init_centroids=init)
    record = {"k": k, "dim": d, "vectors": n, "trained_on": len(sample), "niter": config.niter,
              "init": config.init, "seed": config.seed, "gpu": use_gpu,
              "train_objective": float(kmeans.obj[-1]) if len(kmeans.obj) else None,
              "faiss_blas": blas_record()}
    return kmeans.centroids.astype(np.float32), record


def _kmeans_plus_plus(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import kmeans_plusplus
    from threadpoolctl import threadpool_limits

    # One BLAS thread: each of the K steps is a product of a few candidates with every point,
    # too small to share, and numpy's OpenBLAS threads spin while they wait: on a busy 2-core
    # machine 2 threads took 30x the CPU time of 1 (K=1024, 20k x 64: 75 s against 2.5 s).
    with threadpool_limits(limits=1, user_api="blas"):
        centers, _ = kmeans_plusplus(vectors, k, random_state=seed)
    return np.ascontiguousarray(centers, dtype=np.float32)


class CodeAssigner:
    """Nearest centroid through a FAISS flat L2 index (exact), in batches."""

    def __init__(self, centroids: np.ndarray):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.index = faiss.IndexFlatL2(self.centroids.shape[1])
        self.index.add(self.centroids)

    def assign(self, vectors: np.ndarray, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """(codes (n,) int64, squared distances (n,) float32)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        codes = np.empty(len(vectors), dtype=np.int64)
        dists = np.empty(len(vectors), dtype=np.float32)
        with search_blocks(len(self.centroids)):
            for start in range(0, len(vectors), batch_size):
                d, i = self.index.search(vectors[start : start + batch_size], 1)
                codes[start : start + len(i)] = i[:, 0]
                dists[start : start + len(d)] = d[:, 0]
        return codes, dists


def code_statistics(codes: np.ndarray, k: int, code_rate: float) -> dict:
    """Usage of a codebook over ``codes``: histogram, dead codes, perplexity, entropy bitrate."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=k)
    probs = counts / max(counts.sum(), 1)
    nonzero = probs[probs > 0]
    entropy_bits = float(-(nonzero * np.log2(nonzero)).sum())
    return {
        "tokens": int(counts.sum()),
        "used_codes": int((counts > 0).sum()),
        "dead_codes": int((counts == 0).sum()),
        "perplexity": float(2.0**entropy_bits),
        "entropy_bits": entropy_bits,
        "bits_per_second": entropy_bits * code_rate,
        "histogram": counts.tolist(),
    }


def label_code_agreement(codes: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """HuBERT's unit-quality measures with each code inheriting its clip's label.

    purity: how well a code predicts the label, E_code[max_label p(label | code)];
    cluster_purity: how concentrated a label is on one code, E_label[max_code p(code | label)];
    pnmi: I(label; code) / H(label), the share of the label's entropy the codes explain.
    """
    codes = np.asarray(codes, dtype=np.int64)
    _, label_ids = np.unique(np.asarray(labels), return_inverse=True)
    joint = np.zeros((k, label_ids.max() + 1))
    np.add.at(joint, (codes, label_ids), 1)
    joint /= joint.sum()
    p_code = joint.sum(axis=1)
    p_label = joint.sum(axis=0)
    nonzero = joint > 0
    mutual_info = float((joint[nonzero] * np.log(joint[nonzero] / np.outer(p_code, p_label)[nonzero])).sum())
    label_entropy = float(-(p_label[p_label > 0] * np.log(p_label[p_label > 0])).sum())
    return {
        "purity": float(joint.max(axis=1).sum()),
        "cluster_purity": float(joint.max(axis=0).sum()),
        "pnmi": min(1.0, mutual_info / label_entropy) if label_entropy > 0 else 0.0,  # rounding can pass 1
    }
