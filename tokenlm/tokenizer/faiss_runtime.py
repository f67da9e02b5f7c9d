"""FAISS with the CPU's real BLAS kernels: the one module in tokenlm that imports faiss.

The OpenBLAS bundled in the faiss-cpu wheel is old (0.3.15) and may not recognise a recent
CPU: it then runs generic kernels (``Prescott``) and FAISS k-means takes 2-3x longer than
scikit-learn's Lloyd on numpy's newer OpenBLAS. OpenBLAS reads ``OPENBLAS_CORETYPE`` once,
when the library loads, so the core is chosen here from the CPU's flags *before* faiss is
imported (a user's own ``OPENBLAS_CORETYPE`` wins). Old OpenBLAS builds are known to compute
wrong results with some kernels on some processors, so the choice is then checked: FAISS's
BLAS distances against numpy's on a small product. If they disagree, FAISS's BLAS path is
switched off (its own exact SIMD code computes every distance instead: slower, but right).

FAISS's exhaustive search (k-means' assignment step, ``CodeAssigner``) computes the inner
products of a block of queries x a block of (at most 1024) centroids with one sgemm
(threaded), then one thread scans the block for each query's nearest. A block too large
leaves the caches, so the scan reads it back from memory while the other threads wait; one
too small pays the threads' wake-up per block. ``search_blocks(K)`` sizes the query block so
a block holds BLOCK_DISTANCES (4 MB of floats): 1024 queries at K=1024 (FAISS's default 4096,
16 MB, cost 15-25% more CPU per assignment pass), 4096 at K=256 (1024 there cost 26% more
wall). The results are the same whatever the block.

    from tokenlm.tokenizer.faiss_runtime import faiss, blas_record
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

import numpy as np  # first: numpy's own OpenBLAS must load before OPENBLAS_CORETYPE is set

log = logging.getLogger(__name__)

# OpenBLAS core names by the CPU flags their kernels need, best first. AVX-512 kernels
# (SkylakeX) need the foundation plus the byte/word, doubleword/quadword and length extensions.
CORES_BY_FLAGS = (
    ("SkylakeX", frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"})),
    ("Haswell", frozenset({"avx2", "fma"})),
)
CHECK_TOLERANCE = 1e-4  # relative, on squared distances of order 100 in float32
BLOCK_DISTANCES = 1 << 20  # query x centroid distances per sgemm block of FAISS's search (4 MB)


def blas_core_for(cpuinfo: str) -> str | None:
    """The OpenBLAS core for the CPU described by ``cpuinfo`` (/proc/cpuinfo's text), or None
    when it has neither AVX-512 nor AVX2+FMA (then OpenBLAS's own detection is left alone)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            break  # every core of one machine reports the same flags
    for core, needed in CORES_BY_FLAGS:
        if needed <= flags:
            return core
    return None


def _choose_core() -> tuple[str | None, str]:
    """Set OPENBLAS_CORETYPE for the faiss import about to happen -> (core, chosen_by)."""
    if "faiss" in sys.modules:
        return None, "faiss was imported before tokenlm.tokenizer.faiss_runtime: OpenBLAS's own detection"
    user_core = os.environ.get("OPENBLAS_CORETYPE")
    if user_core:
        return user_core, "OPENBLAS_CORETYPE set by the user"
    try:
        with open("/proc/cpuinfo") as f:
            core = blas_core_for(f.read())
    except OSError:  # not Linux
        core = None
    if core is None:
        return None, "OpenBLAS's own detection"
    return core, "CPU flags"


def _import_faiss(core: str | None, chosen_by: str):
    """faiss, imported with OPENBLAS_CORETYPE=core; the variable is removed again afterwards
    so that child processes detect for themselves rather than inherit it as a user setting."""
    set_here = chosen_by == "CPU flags"
    if set_here:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss as faiss_module
    finally:
        if set_here:
            os.environ.pop("OPENBLAS_CORETYPE", None)
    return faiss_module


def blas_agrees(pairwise_distances, seed: int = 0) -> tuple[bool, float]:
    """``pairwise_distances(x, y)`` (FAISS's: squared L2 distances through one sgemm) against
    numpy's in float64 -> (within CHECK_TOLERANCE, max relative error)."""
    rng = np.random.default_rng(seed)
    # Sizes that are not multiples of any kernel's block, so edge code runs too.
    x = rng.normal(size=(67, 61)).astype(np.float32)
    y = rng.normal(size=(301, 61)).astype(np.float32)
    got = np.asarray(pairwise_distances(x, y)).astype(np.float64)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    want = (x64**2).sum(1)[:, None] - 2 * x64 @ y64.T + (y64**2).sum(1)[None, :]
    error = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0)))
    return bool(np.isfinite(error) and error <= CHECK_TOLERANCE), error


def _faiss_blas_core() -> str | None:
    """The core faiss's OpenBLAS reports running (threadpoolctl), or None if it cannot tell."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for lib in threadpool_info():
        if lib.get("internal_api") == "openblas" and "faiss" in lib.get("filepath", ""):
            return lib.get("architecture")
    return None


_requested, _chosen_by = _choose_core()
faiss = _import_faiss(_requested, _chosen_by)
_ok, _error = blas_agrees(faiss.pairwise_distances)
if not _ok:
    # FAISS computes exact distances without BLAS when a search is below this size threshold.
    faiss.cvar.distance_compute_blas_threshold = 2**31 - 1
    log.warning("FAISS's OpenBLAS (core %s) disagrees with numpy (relative error %.2g): FAISS's BLAS "
                "path is off, k-means on CPU will be slower", _faiss_blas_core() or "unknown", _error)

_RECORD = {
    "core_requested": _requested,
    "chosen_by": _chosen_by,
    "core": _faiss_blas_core(),
    "self_check": "passed" if _ok else "failed: FAISS's BLAS path switched off",
    "self_check_error": _error,
}


def blas_record() -> dict:
    """How FAISS's BLAS was set up, for a stage record: core asked for and why, the core
    OpenBLAS reports, and the numeric self-check."""
    return dict(_RECORD)


def query_block(k: int) -> int:
    """Queries per block of FAISS's exhaustive search over ``k`` centroids: BLOCK_DISTANCES
    distances a block, between 1024 queries and FAISS's default 4096 (module docstring)."""
    per_query = max(1, min(k, faiss.cvar.distance_compute_blas_database_bs))
    return int(np.clip(BLOCK_DISTANCES // per_query, 1024, 4096))


@contextmanager
def search_blocks(k: int):
    """FAISS's searches over ``k`` centroids in ``query_block(k)`` queries meanwhile (a global
    setting of FAISS's, restored after)."""
    previous = faiss.cvar.distance_compute_blas_query_bs
    faiss.cvar.distance_compute_blas_query_bs = query_block(k)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs = previous
