"""Rendering speed and peak memory of the pretraining corpus (``tokenlm data corpus``).

    python scripts/bench_corpus.py                  # 1 h
    python scripts/bench_corpus.py --hours 4        # memory must not grow with the hours
    python scripts/bench_corpus.py --hours 1 --workers 1 --noise --reverb

Renders into a temporary folder (deleted at the end unless ``--keep DIR``) and prints the
speed in x real time (audio seconds per wall-clock second, the whole build included; and
per CPU-second, what a machine shared with other work still shows) and
the peak RSS of the main process and of the largest rendering worker (or eSpeak helper),
both from getrusage. The target (issue 10): at least 100x real time on 2 cores, a 1 h
corpus in about a minute, memory flat in the hours.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _cpu_seconds() -> float:
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", action="store_true")
    parser.add_argument("--reverb", action="store_true")
    parser.add_argument("--keep", type=Path, help="build here and keep it")
    args = parser.parse_args(argv)

    from tokenlm.demo.corpus import build_corpus, default_workers

    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-corpus-")) / "corpus"
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    try:
        summary = build_corpus(out, hours=args.hours, seed=args.seed, noise=args.noise,
                               reverb=args.reverb, workers=args.workers, progress=False)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        size = sum(p.stat().st_size for p in out.rglob("*.wav"))
    finally:
        if args.keep is None:
            shutil.rmtree(out.parent, ignore_errors=True)
    workers = args.workers or default_workers()
    print(f"corpus {summary['hours']:.3f} h ({summary['n_files']} files, {size / 2**20:.0f} MiB), "
          f"{workers} worker(s), noise={args.noise}, reverb={args.reverb}"
          f"{' (cached: nothing rendered)' if summary['cached'] else ''}")
    print(f"  wall {wall:.1f} s  -> {summary['seconds'] / wall:.0f}x real time; "
          f"CPU {cpu:.1f} s -> {summary['seconds'] / cpu:.0f}x real time per busy core")
    print(f"  peak RSS: main {_peak_mb(resource.RUSAGE_SELF):.0f} MB, "
          f"largest worker {_peak_mb(resource.RUSAGE_CHILDREN):.0f} MB")
    print("  per kind: " + ", ".join(f"{k} {v['files']} files / {v['seconds'] / 60:.1f} min"
                                     for k, v in summary["per_kind"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
