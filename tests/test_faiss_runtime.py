"""FAISS's BLAS set-up: the OpenBLAS core chosen from the CPU's flags, the numeric self-check,
and the record a codebook fit keeps of both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tokenlm.tokenizer.codebook import CodebookConfig, fit_codebook
from tokenlm.tokenizer.faiss_runtime import blas_agrees, blas_core_for, blas_record, faiss

REPO = Path(__file__).resolve().parents[1]


def cpuinfo(flags: str) -> str:
    """A /proc/cpuinfo text of two processors with ``flags``."""
    one = f"processor\t: {{}}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\n"
    return one.format(0) + one.format(1)


def test_core_from_cpu_flags():
    avx512 = "fpu sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512ifma"
    assert blas_core_for(cpuinfo(avx512)) == "SkylakeX"
    assert blas_core_for(cpuinfo("fpu sse2 avx avx2 fma avx512f")) == "Haswell"  # AVX-512 foundation alone
    assert blas_core_for(cpuinfo("fpu sse2 avx avx2 fma")) == "Haswell"
    assert blas_core_for(cpuinfo("fpu sse2 avx avx2")) is None  # no FMA: OpenBLAS decides
    assert blas_core_for(cpuinfo("fpu sse2 sse4_2")) is None
    assert blas_core_for("") is None
    assert blas_core_for("flagsome : avx2 fma\n") is None  # only the 'flags' line counts


def test_self_check_passes_here_and_catches_a_wrong_product():
    ok, error = blas_agrees(faiss.pairwise_distances)
    assert ok and error < 1e-4
    ok, error = blas_agrees(lambda x, y: faiss.pairwise_distances(x, y) * 1.001)
    assert not ok and error > 1e-4
    ok, _ = blas_agrees(lambda x, y: np.full((len(x), len(y)), np.nan, dtype=np.float32))
    assert not ok


def test_codebook_record_says_how_faiss_blas_was_set_up():
    vectors = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    _, record = fit_codebook(vectors, 4, CodebookConfig(niter=2, init="faiss"))
    blas = record["faiss_blas"]
    assert set(blas) == {"core_requested", "chosen_by", "core", "self_check", "self_check_error"}
    assert blas == blas_record() and blas["self_check"] == "passed"
    json.dumps(record)  # goes into RUN/tokenizer/k{K}/config.json


def test_a_users_core_wins_and_is_not_leaked():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENBLAS_CORETYPE": "Haswell"}
    code = ("import json, os; from tokenlm.tokenizer.faiss_runtime import blas_record; "
            "print(json.dumps([blas_record(), os.environ['OPENBLAS_CORETYPE']]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    record, env_after = json.loads(out.stdout)
    assert record["chosen_by"] == "OPENBLAS_CORETYPE set by the user"
    assert record["core_requested"] == "Haswell" == env_after
    assert record["core"] in (None, "Haswell")  # None where threadpoolctl cannot tell


def test_search_blocks_hold_a_few_mb_of_distances_and_change_no_result():
    from tokenlm.tokenizer.codebook import CodeAssigner
    from tokenlm.tokenizer.faiss_runtime import faiss, query_block, search_blocks

    assert [query_block(k) for k in (16, 256, 512, 1024, 4096)] == [4096, 4096, 2048, 1024, 1024]
    before = faiss.cvar.distance_compute_blas_query_bs
    with search_blocks(256):
        assert faiss.cvar.distance_compute_blas_query_bs == 4096
    assert faiss.cvar.distance_compute_blas_query_bs == before  # FAISS's global setting restored
    rng = np.random.default_rng(0)
    centroids, points = rng.standard_normal((1024, 8)), rng.standard_normal((5000, 8))
    codes, _ = CodeAssigner(centroids).assign(points)
    exact = ((points[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (codes == exact).mean() > 0.999  # float32 near-ties aside, the nearest centroid
