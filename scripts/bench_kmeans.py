"""K-means for the codebook: FAISS against scikit-learn's Lloyd KMeans and MiniBatchKMeans.

    python scripts/bench_kmeans.py --run runs/demo          # the run's bottleneck vectors + synthetic
    python scripts/bench_kmeans.py                          # synthetic 200k x 64 only, K=256 and 1024
    python scripts/bench_kmeans.py -K 256                   # one K

FAISS is imported through tokenlm.tokenizer.faiss_runtime, which picks its OpenBLAS core from the CPU's
flags; the first lines say which BLAS core each library runs and how FAISS's was chosen.

All three start from the same k-means++ centroids (computed once, not timed) with the same K
and the same amount of work, and their final inertia is computed the same way: the mean
squared distance of every point to its nearest centroid, in float64.

How the work is matched:
  FAISS         faiss.Kmeans, ``niter`` iterations over all points (no subsampling).
  Lloyd         sklearn KMeans(algorithm="lloyd", n_init=1, max_iter=niter, tol=0): the same
                iterations, run to the end (then one more assignment pass for its labels:
                niter + 1 passes against FAISS's niter).
  MiniBatch     sklearn MiniBatchKMeans as fairseq's GSLM uses it (batch_size=10000,
                reassignment_ratio=0, tol=0), with max_iter=niter epochs and early stopping
                off: niter passes over the data, the same number of point-to-centroid
                assignments as niter Lloyd iterations.
  FAISS to MiniBatch's inertia  the fewest FAISS iterations whose objective is no worse than
                MiniBatch's final inertia (time to equal quality).
  fit_codebook  what ``tokenlm tokenize`` runs (its own k-means++ init and seeded subsample of
                K x 256 points, 25 iterations), timed with its init; for reference.

Wall time is what the targets are about; CPU time (all threads of this process) is printed
too, with the load average, because on a busy machine other processes' threads and OpenMP's
waiting inflate wall time unevenly. Both libraries run ``--threads`` threads with passive
waiting (tokenlm sets OMP_WAIT_POLICY before either loads OpenMP). FAISS's exhaustive search
runs in blocks of tokenlm.tokenizer.faiss_runtime.query_block(K) queries, as tokenize's does (why: see
that module).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# tokenlm before torch: it sets OpenMP's passive waiting, which the OpenMP runtime reads once
# when it loads. Imported after torch, FAISS took 8x the CPU time and 20x the wall time on a
# busy machine (spinning threads).
import tokenlm  # noqa: E402,F401  isort: skip

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run whose train-split bottleneck vectors to cluster")
    parser.add_argument("-K", type=int, action="append", help="codebook size, repeatable (default 256 and 1024)")
    parser.add_argument("--niter", type=int, default=20, help="iterations / epochs (default 20)")
    parser.add_argument("--points", type=int, default=200_000, help="synthetic points (default 200000)")
    parser.add_argument("--dim", type=int, default=64, help="synthetic dimension (default 64)")
    parser.add_argument("--minibatch-size", type=int, default=10_000, help="MiniBatchKMeans batch (GSLM: 10000)")
    parser.add_argument("--threads", type=int, default=2, help="torch, FAISS and scikit-learn threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-synthetic", action="store_true", help="only the run's vectors")
    parser.add_argument("--init-points", type=int, help="compute the shared k-means++ init on this many "
                        "points (seeded subsample; default: all), it is slow at large K")
    parser.add_argument("--skip-codebook", action="store_true", help="leave out the fit_codebook row "
                        "(it runs its own k-means++ init)")
    args = parser.parse_args()
    codebook_sizes = args.K or [256, 1024]

    torch.set_num_threads(args.threads)
    from tokenlm.tokenizer.faiss_runtime import faiss

    faiss.omp_set_num_threads(args.threads)
    from threadpoolctl import threadpool_info, threadpool_limits

    from tokenlm.tokenizer.faiss_runtime import blas_record, query_block

    print(f"K={codebook_sizes}, niter={args.niter}, {args.threads} threads, {os.cpu_count()} CPUs visible, "
          f"load average {os.getloadavg()[0]:.1f} (timings on a shared machine are noisy)")
    for lib in threadpool_info():
        if lib.get("internal_api") == "openblas":
            owner = "faiss" if "faiss" in lib["filepath"] else "numpy/scipy/scikit-learn"
            print(f"BLAS of {owner}: OpenBLAS {lib.get('version')}, core {lib.get('architecture')}")
    record = blas_record()
    print(f"FAISS's core chosen by: {record['chosen_by']} (asked {record['core_requested']}); numeric "
          f"self-check {record['self_check']} (max relative error {record['self_check_error']:.1g}); "
          f"search blocks of {', '.join(f'{query_block(k)} (K={k})' for k in codebook_sizes)} queries x "
          f"at most {faiss.cvar.distance_compute_blas_database_bs} centroids; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}")
    with threadpool_limits(limits=args.threads):
        for k in codebook_sizes:
            sets = []
            if args.run is not None:
                sets.append((f"bottleneck vectors of {args.run} (train split)", run_vectors(args.run)))
            if not args.skip_synthetic:
                sets.append((f"Gaussian mixture, {args.points} x {args.dim}",
                             gaussian_mixture(args.points, args.dim, 2 * k, args.seed)))
            for name, vectors in sets:
                compare(name, vectors, k, args)


def compare(name: str, vectors: np.ndarray, k: int, args) -> None:
    from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus
    from threadpoolctl import threadpool_limits

    from tokenlm.tokenizer.codebook import CodebookConfig, fit_codebook
    from tokenlm.tokenizer.faiss_runtime import faiss, search_blocks

    n, d = vectors.shape
    niter = args.niter
    print(f"\n== {name}: {n} x {d}, K={k}, load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    init_on = vectors
    if args.init_points and args.init_points < n:
        init_on = vectors[np.random.default_rng(args.seed).choice(n, args.init_points, replace=False)]
    with threadpool_limits(limits=1, user_api="blas"):  # as fit_codebook seeds (tokenlm.tokenizer.codebook)
        init, _ = kmeans_plusplus(init_on, k, random_state=args.seed)
    init = np.ascontiguousarray(init, dtype=np.float32)
    print(f"k-means++ init on {len(init_on)} points (shared, not timed below): {time.perf_counter() - start:.2f} s")

    results = {}

    objective = []  # FAISS's per-iteration objective: obj[i] = n x inertia after i updates

    def faiss_fit(iterations=niter):
        km = faiss.Kmeans(d, k, niter=iterations, seed=args.seed, max_points_per_centroid=n // k + 1,
                          min_points_per_centroid=1, verbose=False)
        with search_blocks(k):  # as fit_codebook searches
            km.train(vectors, init_centroids=init.copy())
        objective[:] = np.asarray(km.obj, dtype=np.float64) / n
        return km.centroids, f"{iterations} iterations"

    def lloyd_fit():
        km = KMeans(k, init=init, n_init=1, max_iter=niter, tol=0, algorithm="lloyd", random_state=args.seed)
        km.fit(vectors)
        # tol=0 still stops when no label changes ("strict convergence"): say so
        return km.cluster_centers_, f"{km.n_iter_} iterations" + (" (converged)" if km.n_iter_ < niter else "")

    def minibatch_fit():
        km = MiniBatchKMeans(k, init=init, n_init=1, max_iter=niter, batch_size=args.minibatch_size, tol=0,
                             max_no_improvement=None, reassignment_ratio=0.0, compute_labels=False,
                             random_state=args.seed).fit(vectors)
        return km.cluster_centers_, f"{km.n_steps_} steps of {args.minibatch_size}"

    def codebook_fit():
        centroids, record = fit_codebook(vectors, k, CodebookConfig(niter=25, seed=args.seed))
        return centroids, f"25 iterations on {record['trained_on']} points"

    def timed(label, fit):
        cpu0, start = _cpu_seconds(), time.perf_counter()
        centroids, work = fit()
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
        results[label] = (seconds, cpu, inertia(vectors, centroids), work)

    timed("FAISS", faiss_fit)
    trace = objective.copy()
    timed("sklearn KMeans (Lloyd)", lloyd_fit)
    timed("sklearn MiniBatchKMeans", minibatch_fit)
    if not args.skip_codebook:
        timed("fit_codebook (tokenize's default)", codebook_fit)
    # Time to MiniBatch's quality: the fewest FAISS iterations whose objective is no worse.
    mini_i = results["sklearn MiniBatchKMeans"][2]
    enough = [i for i in range(1, len(trace)) if trace[i] <= mini_i]
    timed(TO_MINIBATCH, lambda: faiss_fit(enough[0] if enough else niter))

    base_time, base_cpu, base_inertia, _ = results["FAISS"]
    print(f"{'method':34s} {'wall':>8s} {'x FAISS':>8s} {'CPU':>8s} {'x FAISS':>8s} {'inertia':>11s} "
          f"{'vs FAISS':>9s}  work")
    for label, (seconds, cpu, value, work) in results.items():
        print(f"{label:34s} {seconds:7.2f}s {seconds / base_time:7.2f}x {cpu:7.2f}s {cpu / base_cpu:7.2f}x "
              f"{value:11.5g} {100 * (value / base_inertia - 1):+8.2f}%  {work}")
    lloyd_t, lloyd_cpu, lloyd_i, _ = results["sklearn KMeans (Lloyd)"]
    mini_t, mini_cpu, mini_i, _ = results["sklearn MiniBatchKMeans"]
    fast_t, fast_cpu, fast_i, _ = results[TO_MINIBATCH]
    print(f"targets: FAISS time <= Lloyd's at equal work: {'yes' if base_time <= lloyd_t else 'NO'} "
          f"({lloyd_t / base_time:.2f}x wall, {lloyd_cpu / base_cpu:.2f}x CPU); FAISS >= 3x faster than MiniBatch "
          f"to its inertia or lower: {'yes' if mini_t >= 3 * fast_t and fast_i <= mini_i else 'NO'} "
          f"({mini_t / fast_t:.2f}x wall, {mini_cpu / fast_cpu:.2f}x CPU; at equal work {mini_t / base_time:.2f}x "
          f"wall, {mini_cpu / base_cpu:.2f}x CPU); inertia no worse than either at equal work: "
          f"{'yes' if base_inertia <= min(lloyd_i, mini_i) * 1.001 else 'NO'}")


TO_MINIBATCH = "FAISS to MiniBatch's inertia"


def _cpu_seconds() -> float:
    """CPU time of this process, every thread (spin-waiting threads included)."""
    t = os.times()
    return t.user + t.system


def inertia(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 16384) -> float:
    """Mean squared distance of every vector to its nearest centroid, in float64."""
    c = np.asarray(centroids, dtype=np.float64)
    c_sq = np.square(c).sum(1)
    total = 0.0
    for start in range(0, len(vectors), chunk):
        x = vectors[start:start + chunk].astype(np.float64)
        d = np.square(x).sum(1, keepdims=True) - 2 * x @ c.T + c_sq  # (chunk, K)
        total += np.maximum(d.min(1), 0).sum()
    return total / len(vectors)


def gaussian_mixture(n: int, d: int, components: int, seed: int) -> np.ndarray:
    """Anisotropic Gaussian clusters of unequal sizes and spreads: structure for k-means to
    find, but more components than K, so no clustering is exact."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(components, d))
    weights = rng.dirichlet(np.full(components, 2.0))
    labels = rng.choice(components, size=n, p=weights)
    scales = rng.uniform(0.3, 1.5, size=(components, d))
    return (centers[labels] + rng.normal(size=(n, d)) * scales[labels]).astype(np.float32)


def run_vectors(run: Path) -> np.ndarray:
    """The un-quantised bottleneck vectors of the run's train split, as the codebook stage sees them."""
    from tokenlm.run.rundir import RunDir
    from tokenlm.tokenizer.fit import PatchSampler, bottlenecks
    from tokenlm.tokenizer.tokenizer import load_patch_coder

    coder = load_patch_coder(RunDir(run).tokenizer)
    return bottlenecks(coder, PatchSampler(RunDir(run).features, "train", coder.features, coder))


if __name__ == "__main__":
    main()
