"""Several codes per patch (tokenlm.tokenizer.quantizers): residual levels converge to the vectors,
product groups reassemble exactly, one level is the reference codebook bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.tokenizer.codebook import CodebookConfig, fit_codebook
from tokenlm.tokenizer.quantizers import Quantizer, bits_per_second, fit_quantizer, quantizer_kind

CONFIG = CodebookConfig(niter=10, points_per_centroid=64, seed=0)


def blobs(n=600, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(2, 0.5, d)).astype(np.float32)


def test_one_level_is_the_reference_codebook():
    vectors = blobs()
    reference, _ = fit_codebook(vectors, 16, CONFIG)
    quantizer, record = fit_quantizer(vectors, 16, "single", 1, CONFIG)
    np.testing.assert_array_equal(quantizer.to_array(), reference)  # the bytes codebook.npy holds
    assert quantizer.to_array().shape == (16, 8) and quantizer.levels == 1
    codes, dists = quantizer.assign(vectors)
    brute = np.square(vectors[:, None] - reference[None]).sum(-1)
    np.testing.assert_array_equal(codes[:, 0], brute.argmin(1))
    np.testing.assert_allclose(dists, brute.min(1), rtol=1e-4, atol=1e-4)


def test_residual_error_falls_with_every_level_and_level_one_is_the_reference():
    vectors = blobs()
    reference, _ = fit_codebook(vectors, 16, CONFIG)
    quantizer, record = fit_quantizer(vectors, 16, "residual", 4, CONFIG)
    np.testing.assert_array_equal(quantizer.codebooks[0], reference)
    errors = []
    for levels in range(1, 5):
        partial = Quantizer(quantizer.codebooks[:levels], "residual" if levels > 1 else "single")
        errors.append(float(np.square(partial.quantise(vectors) - vectors).sum(1).mean()))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]
    assert record["levels"] == 4 and len(record["level_objectives"]) == 4
    # assign's distances are those of the reconstruction the codes give
    codes, dists = quantizer.assign(vectors)
    np.testing.assert_allclose(dists, np.square(quantizer.reconstruct(codes) - vectors).sum(1), rtol=1e-3, atol=1e-4)


def test_residual_levels_are_exact_at_the_limit_on_a_toy_set():
    # 4 points, 2 codes per level: level 1 splits them in two pairs, level 2 tells each pair's
    # members apart (the residuals, +-r around each centroid, take exactly 2 values); the sum of
    # the two centroids is each point exactly.
    vectors = np.array([[10, 0, 1], [10, 0, -1], [-10, 0, 1], [-10, 0, -1]], dtype=np.float32)
    quantizer, _ = fit_quantizer(vectors, 2, "residual", 2, CodebookConfig(niter=20, points_per_centroid=4, seed=0))
    np.testing.assert_allclose(quantizer.quantise(vectors), vectors, atol=1e-5)
    codes, dists = quantizer.assign(vectors)
    assert len({tuple(c) for c in codes}) == 4  # every point its own pair of codes
    np.testing.assert_allclose(dists, 0, atol=1e-6)


def test_product_groups_reassemble_exactly():
    vectors = blobs(d=8)
    quantizer, _ = fit_quantizer(vectors, 16, "product", 4, CONFIG)
    assert quantizer.codebooks.shape == (4, 16, 2) and quantizer.dim == 8
    codes, dists = quantizer.assign(vectors)
    rebuilt = quantizer.reconstruct(codes)
    for g in range(4):  # each group's slice is that group's centroid, in its place
        np.testing.assert_array_equal(rebuilt[:, 2 * g:2 * g + 2], quantizer.codebooks[g][codes[:, g]])
    np.testing.assert_allclose(dists, np.square(rebuilt - vectors).sum(1), rtol=1e-3, atol=1e-4)
    # with as many codes per group as distinct values, reassembly is the vectors themselves
    grid = np.array([[a, b, c, e] for a in (0, 1) for b in (0, 1) for c in (0, 1) for e in (0, 1)], np.float32)
    exact, _ = fit_quantizer(grid, 4, "product", 2, CodebookConfig(niter=20, points_per_centroid=16, seed=0))
    np.testing.assert_allclose(exact.quantise(grid), grid, atol=1e-6)


def test_the_shape_on_disk_says_the_kind():
    vectors = blobs()
    for kind, levels, shape in (("single", 1, (16, 8)), ("residual", 3, (3, 16, 8)), ("product", 2, (2, 16, 4))):
        quantizer, _ = fit_quantizer(vectors, 16, kind, levels, CONFIG)
        array = quantizer.to_array()
        assert array.shape == shape
        again = Quantizer.from_array(array, 8)
        assert again.kind == kind and again.levels == levels
        np.testing.assert_array_equal(again.quantise(vectors), quantizer.quantise(vectors))
    with pytest.raises(ArtifactError, match="does not fit"):
        Quantizer.from_array(np.zeros((3, 16, 5), np.float32), 8)


def test_settings_and_bitrate():
    assert quantizer_kind(1, 1) == "single" and quantizer_kind(2, 1) == "residual" and quantizer_kind(1, 4) == "product"
    with pytest.raises(ConfigError, match="cannot both"):
        quantizer_kind(2, 2)
    with pytest.raises(ConfigError, match=">= 1"):
        quantizer_kind(0, 1)
    with pytest.raises(ConfigError, match="divide"):
        fit_quantizer(blobs(d=8), 4, "product", 3, CONFIG)
    assert bits_per_second(256, 2, 20.0) == 2 * 8 * 20.0
    assert math.isclose(bits_per_second(1024, 1, 20.0), 200.0)


def test_whitening_makes_unit_covariance_and_reconstructs_in_the_bottleneck_space():
    from tokenlm.tokenizer.quantizers import fit_whitening, unwhiten, whiten

    rng = np.random.default_rng(0)
    vectors = (rng.normal(size=(2000, 4)) @ np.array([[3, 1, 0, 0], [0, 1, 0, 0], [0, 0, .1, 0], [0, 0, 0, .01]])
               + 5).astype(np.float32)
    whitening = fit_whitening(vectors)
    white = whiten(vectors, whitening)
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(4), atol=1e-3)
    np.testing.assert_allclose(unwhiten(white, whitening), vectors, rtol=1e-4, atol=1e-3)
    quantizer, record = fit_quantizer(vectors, 16, "residual", 2, CONFIG, whitened=True)
    assert record["whitened"] and quantizer.whitening is not None
    codes, dists = quantizer.assign(vectors)
    rebuilt = quantizer.reconstruct(codes)  # in the bottleneck's own space
    np.testing.assert_allclose(dists, np.square(rebuilt - vectors).sum(1), rtol=1e-3, atol=1e-4)
    # the low-variance directions get codes: the whitened error is spread over every direction
    plain, _ = fit_quantizer(vectors, 16, "residual", 2, CONFIG)
    small = np.abs(quantizer.quantise(vectors)[:, 3] - vectors[:, 3]).mean()
    assert small < np.abs(plain.quantise(vectors)[:, 3] - vectors[:, 3]).mean()
