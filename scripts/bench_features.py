"""Feature extraction benchmark: decode + resample + log-mel throughput and peak memory.

Runs the real ``prepare`` stage (scan, decode, resample, log-mel, float16 write, train-split
statistics) in a fresh subprocess per corpus size, so each size reports its own peak RSS:
with N and SCALE*N clips the peak should stay flat, since clips are streamed. Then times
each step on its own, single-threaded, to show where the time goes.

    python scripts/bench_features.py                     # synthetic 44.1 kHz stereo clips
    python scripts/bench_features.py --data data/demo    # a real dataset (any layout)

Throughput is seconds of audio per second of wall time ("x real time"); the target is 300x
on a 2-core machine with ``--threads 2``. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_X = 300.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="dataset folder or manifest (default: data/demo if built, else synthetic)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic clips even if data/demo exists")
    p.add_argument("--clips", type=int, default=100, help="N: clips in the small run (default 100)")
    p.add_argument("--scale", type=int, default=4, help="the large run has SCALE*N clips (default 4)")
    p.add_argument("--seconds", type=float, default=2.0, help="synthetic clip length (default 2 s)")
    p.add_argument("--rate", type=int, default=44100, help="synthetic sample rate (default 44100)")
    p.add_argument("--channels", type=int, default=2, help="synthetic channels (default 2)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch.set_num_threads in the runs (default 2); prepare itself featurises "
                        "one clip per worker thread, with torch on one intra-op thread meanwhile")
    p.add_argument("--profile-clips", type=int, default=40, help="clips timed step by step (default 40)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--child", nargs=2, metavar=("MANIFEST", "RUN"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- corpus -----------------------------------------------------------------------------

def synthesise(out: Path, n: int, seconds: float, rate: int, channels: int) -> list[tuple[str, str]]:
    """n clips of harmonic tones + noise, 16-bit PCM; returns (path, label) pairs."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    items = []
    for i in range(n):
        label = f"class{i % 5}"
        f0 = 110.0 * 2 ** (i % 5) * rng.uniform(0.9, 1.1)
        tone = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 6))
        wav = 0.2 * tone[:, None] * rng.uniform(0.5, 1.0, size=channels)
        wav += 0.02 * rng.standard_normal((len(t), channels))
        path = out / f"clip{i:05d}.wav"
        sf.write(path, wav.astype(np.float32), rate, subtype="PCM_16")
        items.append((str(path), label))
    return items


def dataset_items(data: str) -> list[tuple[str, str]]:
    from tokenlm.data.layouts import scan_dataset

    _, clips = scan_dataset(data)
    return [(str(Path(c.path).resolve()), c.label or "none") for c in clips]


def write_manifest(path: Path, items: list[tuple[str, str]], n: int) -> None:
    """A manifest of n clips, cycling over the items (unique ids, repeated files)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "label"])
        for i in range(n):
            file, label = items[i % len(items)]
            writer.writerow([f"c{i:06d}", file, label])


# ---- one measured run (in its own process) --------------------------------------------

def child(manifest: str, run: str, threads: int) -> None:
    import torch

    from tokenlm.core.fileio import read_json
    from tokenlm.pipeline.prepare import prepare
    from tokenlm.run.rundir import META, RunDir

    torch.set_num_threads(threads)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    prepare(manifest, run, progress=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    meta = read_json(RunDir(run).features / META)
    print(json.dumps({
        "clips": meta["clips_ok"] + meta["clips_skipped"],
        "audio_s": sum(meta["seconds"].values()),
        "wall_s": wall,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "baseline_rss_mb": before.ru_maxrss / 1024,
        "peak_rss_mb": after.ru_maxrss / 1024,
    }))


def measure(items, n: int, threads: int, tmp: Path) -> dict:
    manifest = tmp / f"manifest_{n}.csv"
    write_manifest(manifest, items, n)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(manifest), str(tmp / f"run_{n}"), "--threads", str(threads)],
        capture_output=True, text=True, cwd=REPO,
    )
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- step-by-step profile --------------------------------------------------------------

def profile(items, n: int) -> dict:
    """Per-step wall time, one clip at a time on one thread (the steps of audio.load_audio)."""
    import soundfile as sf
    import soxr
    import torch

    from tokenlm.data.audio import prepare_waveform
    from tokenlm.data.features import FeatureConfig, LogMel

    torch.set_num_threads(1)
    config = FeatureConfig()
    log_mel = LogMel(config)
    steps = dict.fromkeys(["decode", "mix+checks", "resample", "log-mel", "float16 write"], 0.0)
    audio_s = 0.0
    sink = io.BytesIO()
    for path, _ in (items * (n // len(items) + 1))[:n]:
        t0 = time.perf_counter()
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        t1 = time.perf_counter()
        mono = prepare_waveform(samples, rate, rate)  # checks and mono mix, no resampling
        t2 = time.perf_counter()
        if rate != config.sample_rate:  # the resampling step of prepare_waveform, alone
            mono = soxr.resample(mono, rate, config.sample_rate, quality="HQ")
        t3 = time.perf_counter()
        with torch.inference_mode():
            frames = log_mel(torch.from_numpy(mono)).numpy()
        t4 = time.perf_counter()
        sink.write(np.ascontiguousarray(frames, dtype=np.float16).tobytes())
        t5 = time.perf_counter()
        for key, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            steps[key] += dt
        audio_s += len(mono) / config.sample_rate
        sink.seek(0)
    return {"clips": n, "audio_s": audio_s, "steps_s": steps}


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(*args.child, threads=args.threads)
        return

    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp_name:
        tmp = Path(tmp_name)
        data = args.data or (None if args.synthetic or not (REPO / "data/demo").is_dir() else str(REPO / "data/demo"))
        if data:
            items = dataset_items(data)
            source = f"{data} ({len(items)} files)"
        else:
            (tmp / "audio").mkdir()
            items = synthesise(tmp / "audio", args.clips, args.seconds, args.rate, args.channels)
            source = f"synthetic: {args.clips} clips of {args.seconds:g} s, {args.rate} Hz, {args.channels} ch, PCM_16"
        info = sf.info(items[0][0])
        print(f"corpus: {source}; first file {info.samplerate} Hz, {info.channels} ch, {info.subtype}")
        print(f"torch threads: {args.threads}; sizes: {args.clips} and {args.scale * args.clips} clips "
              f"(files reused cyclically)\n")

        runs = [measure(items, n, args.threads, tmp) for n in (args.clips, args.scale * args.clips)]
        # "per CPU s" divides by the process's CPU time: less sensitive to a busy machine.
        print(f"{'clips':>7} {'audio s':>9} {'wall s':>8} {'x real time':>12} {'per CPU s':>10} "
              f"{'RSS after import MB':>20} {'peak RSS MB':>12}")
        for r in runs:
            r["x_realtime"] = r["audio_s"] / r["wall_s"]
            r["x_realtime_per_cpu_s"] = r["audio_s"] / max(r["cpu_s"], 1e-9)
            print(f"{r['clips']:>7} {r['audio_s']:>9.1f} {r['wall_s']:>8.2f} {r['x_realtime']:>12.0f} "
                  f"{r['x_realtime_per_cpu_s']:>10.0f} {r['baseline_rss_mb']:>20.0f} {r['peak_rss_mb']:>12.0f}")
        growth = runs[1]["peak_rss_mb"] - runs[0]["peak_rss_mb"]
        print(f"peak RSS growth from {args.clips} to {args.scale * args.clips} clips: {growth:+.0f} MB")
        best = max(r["x_realtime"] for r in runs)
        verdict = "meets" if best >= TARGET_X else "BELOW"
        print(f"throughput: {best:.0f}x real time ({verdict} the {TARGET_X:.0f}x target); "
              f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")

        prof = profile(items, min(args.profile_clips, len(items) * args.scale))
        total = sum(prof["steps_s"].values())
        print(f"one thread, step by step over {prof['clips']} clips ({prof['audio_s']:.0f} s of audio):")
        for step, seconds in prof["steps_s"].items():
            print(f"  {step:<14} {1000 * seconds / prof['clips']:8.2f} ms/clip {100 * seconds / total:5.1f}%"
                  f"  ({prof['audio_s'] / max(seconds, 1e-9):8.0f}x real time alone)")
        print(f"  {'all':<14} {1000 * total / prof['clips']:8.2f} ms/clip        "
              f"  ({prof['audio_s'] / total:8.0f}x real time on one thread)")

        if args.json:
            Path(args.json).write_text(json.dumps({"source": source, "threads": args.threads,
                                                   "runs": runs, "profile": prof}, indent=2) + "\n")


if __name__ == "__main__":
    main()
