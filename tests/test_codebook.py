"""The codebook: FAISS k-means, exact nearest-centroid assignment, code statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenlm.tokenizer.codebook import CodeAssigner, CodebookConfig, code_statistics, fit_codebook


def brute_force_nearest(vectors: np.ndarray, centroids: np.ndarray):
    """Nearest centroid and squared distance in float64 numpy, plus the gap to the runner-up."""
    diff = vectors[:, None, :].astype(np.float64) - centroids[None, :, :].astype(np.float64)
    dists = np.square(diff).sum(-1)  # (n, K)
    order = np.argsort(dists, axis=1)
    rows = np.arange(len(vectors))
    nearest = dists[rows, order[:, 0]]
    gap = dists[rows, order[:, 1]] - nearest
    return order[:, 0], nearest, gap


def gaussian_mixture(n: int, k: int, d: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)).astype(np.float32) * 4
    labels = rng.integers(0, k, n)
    points = centers[labels] + spread * rng.normal(size=(n, d)).astype(np.float32)
    return points.astype(np.float32), centers, labels


# n below and above FAISS's BLAS threshold (20 queries): two different distance code paths;
# batch_size 7 makes assign() cross several batch boundaries.
@pytest.mark.parametrize("n, batch_size", [(5, 65536), (19, 65536), (3000, 65536), (3000, 7)])
def test_faiss_assignment_equals_brute_force(n, batch_size):
    rng = np.random.default_rng(n)
    centroids = rng.normal(size=(64, 16)).astype(np.float32)
    vectors = (centroids[rng.integers(0, 64, n)] + 0.7 * rng.normal(size=(n, 16))).astype(np.float32)
    codes, dists = CodeAssigner(centroids).assign(vectors, batch_size=batch_size)
    ref_codes, ref_dists, gap = brute_force_nearest(vectors, centroids)
    assert codes.dtype == np.int64 and codes.shape == (n,)
    assert dists.dtype == np.float32 and dists.shape == (n,)
    # Only a float32 near-tie may pick the other centroid; here there are none.
    clear = gap > 1e-4 * np.maximum(ref_dists, 1.0)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(codes[clear], ref_codes[clear])
    np.testing.assert_allclose(dists, ref_dists, rtol=1e-4, atol=1e-4)


def test_assignment_does_not_depend_on_batching():
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(32, 8)).astype(np.float32)
    vectors = rng.normal(size=(500, 8)).astype(np.float32)
    assigner = CodeAssigner(centroids)
    whole, _ = assigner.assign(vectors)
    pieces = np.concatenate([assigner.assign(vectors[s:s + 13])[0] for s in range(0, 500, 13)])
    np.testing.assert_array_equal(whole, pieces)


def test_assign_accepts_float64_and_non_contiguous_input():
    rng = np.random.default_rng(2)
    centroids = rng.normal(size=(16, 8)).astype(np.float32)
    vectors = rng.normal(size=(8, 100)).T  # (100, 8) float64, Fortran-ordered
    codes, _ = CodeAssigner(centroids).assign(vectors)
    np.testing.assert_array_equal(codes, brute_force_nearest(vectors.astype(np.float32), centroids)[0])


def test_fit_codebook_finds_separated_clusters():
    points, centers, _ = gaussian_mixture(4000, 8, 16, spread=0.1, seed=3)
    centroids, record = fit_codebook(points, 8, CodebookConfig(niter=20))
    assert centroids.shape == (8, 16) and centroids.dtype == np.float32
    assert record["k"] == 8 and record["dim"] == 16 and record["vectors"] == 4000 and record["init"] == "kmeans++"
    # Every true centre has a centroid next to it, and the mean squared distance to the
    # nearest centroid is the noise variance (16 dims x 0.1^2), not a merged-cluster value.
    _, to_true, _ = brute_force_nearest(centers, centroids)
    assert to_true.max() < 0.05
    _, sq, _ = brute_force_nearest(points, centroids)
    assert sq.mean() == pytest.approx(16 * 0.01, rel=0.1)


@pytest.mark.parametrize("init", ["kmeans++", "faiss"])
def test_fit_codebook_is_deterministic_per_seed(init):
    points, _, _ = gaussian_mixture(3000, 20, 8, spread=1.0, seed=4)
    a, _ = fit_codebook(points, 16, CodebookConfig(niter=10, seed=0, init=init))
    b, _ = fit_codebook(points, 16, CodebookConfig(niter=10, seed=0, init=init))
    c, _ = fit_codebook(points, 16, CodebookConfig(niter=10, seed=1, init=init))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_fit_codebook_subsamples_to_the_point_budget():
    points, _, _ = gaussian_mixture(5000, 4, 8, spread=1.0, seed=5)
    centroids, record = fit_codebook(points, 4, CodebookConfig(niter=5, points_per_centroid=100))
    assert record["vectors"] == 5000 and record["trained_on"] == 400
    assert centroids.shape == (4, 8)


def test_fit_codebook_no_worse_than_lloyd_from_the_same_init():
    from sklearn.cluster import KMeans

    from tokenlm.tokenizer.codebook import _kmeans_plus_plus

    points, _, _ = gaussian_mixture(6000, 48, 8, spread=1.5, seed=6)
    k, niter = 32, 15
    ours, _ = fit_codebook(points, k, CodebookConfig(niter=niter, seed=0))
    init = _kmeans_plus_plus(points, k, 0)
    lloyd = KMeans(k, init=init, n_init=1, max_iter=niter, tol=0, algorithm="lloyd").fit(points)
    inertia = brute_force_nearest(points, ours)[1].mean()
    reference = brute_force_nearest(points, lloyd.cluster_centers_.astype(np.float32))[1].mean()
    assert inertia <= reference * 1.01


def test_fit_codebook_needs_as_many_vectors_as_codes():
    with pytest.raises(ValueError, match="cannot fit 10 codes on 5 vectors"):
        fit_codebook(np.zeros((5, 4), np.float32), 10)


def test_codebook_config_rejects_an_unknown_init():
    with pytest.raises(ValueError, match="init must be"):
        CodebookConfig(init="random")


def test_code_statistics_by_hand():
    stats = code_statistics(np.array([0, 0, 1, 3]), k=4, code_rate=20.0)
    # p = (1/2, 1/4, 0, 1/4): H = 1/2*1 + 2 * 1/4*2 = 1.5 bits
    assert stats["histogram"] == [2, 1, 0, 1]
    assert stats["tokens"] == 4 and stats["used_codes"] == 3 and stats["dead_codes"] == 1
    assert stats["entropy_bits"] == pytest.approx(1.5)
    assert stats["perplexity"] == pytest.approx(2**1.5)
    assert stats["bits_per_second"] == pytest.approx(30.0)


def test_code_statistics_of_uniform_and_constant_codes():
    uniform = code_statistics(np.arange(256).repeat(3), k=256, code_rate=20.0)
    assert uniform["perplexity"] == pytest.approx(256) and uniform["dead_codes"] == 0
    assert uniform["bits_per_second"] == pytest.approx(8 * 20.0)
    constant = code_statistics(np.full(10, 5), k=8, code_rate=20.0)
    assert constant["entropy_bits"] == 0 and constant["perplexity"] == 1 and constant["dead_codes"] == 7
    empty = code_statistics(np.zeros(0, dtype=np.int64), k=4, code_rate=20.0)
    assert empty["tokens"] == 0 and empty["dead_codes"] == 4 and not math.isnan(empty["perplexity"])
