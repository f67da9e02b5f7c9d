"""Throughput of ``prepare`` and of encoding with a trained tokenizer, on the local engine and
on Ray (a local cluster of 1 and 2 workers), and whether their outputs are the same bytes.

    python scripts/bench_engine.py                       # 1 h corpus (rendered once into the cache)
    python scripts/bench_engine.py --corpus DIR --no-4h

Renders a 1 h corpus with ``tokenlm data corpus`` into ``--corpus`` (default
data/bench_engine/corpus-1h) unless it is there, trains a small tokenizer on its features
(not timed), then times each engine: x real time (audio seconds per wall-clock second) and CPU
seconds of this process and every process under it (Ray's too: a shared machine's load shows
in wall time, much less in CPU time). Ray's start is timed apart, with its workers' first
import of tokenlm and torch (a warm-up task per worker): a cluster is started once and serves
many stages. Last, in a fresh process each, local and Ray (2 workers) on the 1 h corpus and on
a 4 h manifest listing its files 4 times under other ids: x real time (fixed costs weigh less
on more audio) and the driver's peak RSS (of the driver process alone: its VmHWM), which should
not grow with the hours beyond the per-clip bookkeeping (manifest and index rows). Issue 13's
target: Ray's overhead at most 20% against local on the same cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu_seconds() -> float:
    """CPU seconds of this process and of every live process under it (Ray's raylet and its
    workers, when this process started the cluster), with the children each has reaped: from
    /proc, since Ray's workers are never waited for by this process."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) "
            parent[int(entry)] = int(fields[1])
            cpu[int(entry)] = sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    tree, grown = {os.getpid()}, True
    while grown:
        more = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= more
        grown = bool(more)
    return sum(cpu.get(pid, 0.0) for pid in tree)


def _timed(fn):
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - t0, _cpu_seconds() - cpu0


def _corpus(path: Path) -> Path:
    if not (path / "manifest.csv").is_file():
        print(f"rendering a 1 h corpus into {path} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "tokenlm", "data", "corpus", "--out", str(path), "--hours", "1"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return path


def _hours_manifest(corpus: Path, times: int, out: Path) -> Path:
    """A manifest listing the corpus's files ``times`` over, under new ids (absolute paths)."""
    with open(corpus / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "path"])
        writer.writeheader()
        for copy in range(times):
            writer.writerows({"id": f"c{copy}/{r['path']}", "path": str((corpus / r["path"]).resolve())} for r in rows)
    return out


def _snapshot(folder: Path, dtype: str, width: int = 1) -> tuple:
    """What a store holds, layout aside: its JSON files (stage bookkeeping aside), index rows, arrays."""
    from tokenlm.data.clips import SPLITS
    from tokenlm.data.store import RaggedSplit

    meta = json.loads((folder / "meta.json").read_text())
    manifest = (folder / "manifest.jsonl").read_text() if (folder / "manifest.jsonl").is_file() else None
    splits = []
    for split in SPLITS:
        ragged = RaggedSplit(folder, split, dtype, width)
        splits.append((ragged.rows, [np.asarray(a).tobytes() for _, a in ragged]))
    return meta, manifest, splits


class _WarmUp:
    """A block that makes a Ray worker import what the stages' workers import."""

    def __init__(self):
        import tokenlm.pipeline.prepare  # noqa: F401
        import tokenlm.tokenizer.encoding  # noqa: F401  (torch, FAISS)

    def __call__(self, number: int, block: list) -> int:
        time.sleep(1.0)  # long enough for every worker to take one
        return number


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, whose count starts at exec. (getrusage's ru_maxrss
    would not do in a child: Linux carries it over fork and exec, so the child reports at least
    the parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _driver_run(manifest_dir: str, tokenizer: str, out: str, engine_name: str) -> None:
    """(In a fresh process) prepare + encode ``manifest_dir`` on ``local`` or ``ray`` (2
    workers, warmed up first); print each stage's wall time and the driver's peak RSS."""
    from tokenlm.data.splits import SplitConfig
    from tokenlm.engine import EngineConfig, engine_session
    from tokenlm.engine.ray_map import map_blocks
    from tokenlm.pipeline.prepare import prepare
    from tokenlm.pipeline.tokenize import encode_new_data

    engine = EngineConfig(engine_name, workers=2 if engine_name == "ray" else None)
    with engine_session(engine):
        if engine.is_ray:
            list(map_blocks(engine, _WarmUp, (), [[]] * 2, progress=False))
        prepare_s, _ = _timed(lambda: prepare(manifest_dir, Path(out) / "run", progress=False, allow_outside=True,
                                              engine=engine))
        encode_s, _ = _timed(lambda: encode_new_data(Path(tokenizer), Path(manifest_dir), Path(out) / "enc",
                                                     SplitConfig(), progress=False, allow_outside=True, engine=engine))
    print(json.dumps({"peak_rss_mb": _peak_rss_mb(),
                      "prepare_s": prepare_s, "encode_s": encode_s}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "bench_engine" / "corpus-1h")
    parser.add_argument("--no-4h", action="store_true", help="skip the driver-memory runs (1 h vs 4 h)")
    parser.add_argument("--driver-run", nargs=4, metavar=("MANIFEST_DIR", "TOKENIZER", "OUT", "ENGINE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver_run:
        _driver_run(*args.driver_run)
        return 0

    from tokenlm.data.audio import audio_seconds
    from tokenlm.data.layouts import scan_dataset
    from tokenlm.data.splits import SplitConfig
    from tokenlm.engine import EngineConfig
    from tokenlm.engine.ray_map import map_blocks, ray_session
    from tokenlm.models.autoencoder import AutoencoderConfig
    from tokenlm.pipeline.prepare import prepare
    from tokenlm.pipeline.tokenize import encode_new_data, tokenize
    from tokenlm.tokenizer.tokenizer import AutoencoderTraining, TokenizerConfig

    corpus = _corpus(args.corpus)
    audio = sum(audio_seconds(c.path) for c in scan_dataset(corpus)[1])
    print(f"corpus {audio / 3600:.2f} h ({corpus}); load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        results, outputs = {}, {}
        local = work / "local"
        results["local"] = [_timed(lambda: prepare(corpus, local, progress=False))]
        tokenize(local, TokenizerConfig(codebook_size=64, autoencoder=AutoencoderConfig(bottleneck=16),
                                        training=AutoencoderTraining(epochs=1)), device="cpu", progress=False)
        tokenizer = local / "tokenizer"
        results["local"].append(_timed(lambda: encode_new_data(tokenizer, corpus, work / "enc-local", SplitConfig(),
                                                               progress=False)))
        outputs["local"] = (_snapshot(local / "features", "float16", 64), _snapshot(work / "enc-local/tokens/k64", "uint16"))
        for workers in (1, 2):
            name, engine = f"ray x{workers}", EngineConfig("ray", workers=workers)
            t0, cpu0 = time.perf_counter(), _cpu_seconds()
            with ray_session(engine):
                list(map_blocks(engine, _WarmUp, (), [[]] * workers, progress=False))
                start = time.perf_counter() - t0
                run, enc = work / f"ray{workers}", work / f"enc-ray{workers}"
                results[name] = [_timed(lambda: prepare(corpus, run, progress=False, engine=engine)),
                                 _timed(lambda: encode_new_data(tokenizer, corpus, enc, SplitConfig(), progress=False,
                                                                engine=engine))]
                session_cpu = _cpu_seconds() - cpu0  # before the cluster's processes are gone
            results[name].append((start, session_cpu))
            outputs[name] = (_snapshot(run / "features", "float16", 64), _snapshot(enc / "tokens/k64", "uint16"))
        print(f"\n{'engine':<9} {'prepare x rt':>12} {'cpu s':>7} {'encode x rt':>12} {'cpu s':>7} "
              f"{'vs local':>17} {'identical':>9}")
        base = results["local"]
        for name, ((p_wall, p_cpu), (e_wall, e_cpu), *start) in results.items():
            same = outputs[name] == outputs["local"]
            overhead = f"{p_wall / base[0][0] - 1:+.0%} / {e_wall / base[1][0] - 1:+.0%}"
            print(f"{name:<9} {audio / p_wall:>11.0f}x {p_cpu:>7.1f} {audio / e_wall:>11.0f}x {e_cpu:>7.1f} "
                  f"{overhead:>17} {str(same):>9}"
                  + (f"  (Ray start + warm-up {start[0][0]:.1f} s, not counted; whole session {start[0][1]:.1f} cpu s)"
                     if start else ""))
        print("(vs local: wall time of prepare / encode; cpu s: this process and every process under it)")
        if not args.no_4h:
            print("\nfresh process each (prepare + encode): the driver's peak RSS, and x real time")
            for engine in ("local", "ray"):
                for hours in (1, 4):
                    manifest = _hours_manifest(corpus, hours, work / f"manifest-{hours}h")
                    done = subprocess.run([sys.executable, __file__, "--driver-run", str(manifest), str(tokenizer),
                                           str(work / f"{engine}-{hours}h"), engine], capture_output=True, text=True,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)})
                    if done.returncode:
                        print(done.stderr[-2000:])
                        return 1
                    got = json.loads(done.stdout.strip().splitlines()[-1])
                    print(f"  {engine + (' x2' if engine == 'ray' else ''):<8} {hours} h: peak RSS "
                          f"{got['peak_rss_mb']:.0f} MB; prepare {hours * audio / got['prepare_s']:.0f}x, "
                          f"encode {hours * audio / got['encode_s']:.0f}x real time")
        print(f"load at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0




if __name__ == "__main__":
    sys.exit(main())
