"""Peak memory (RSS) of ``tokenlm prepare`` and ``tokenlm tokenize`` on long recordings.

    python scripts/bench_memory.py                       # 1 x 0.25 h, 1 x 2 h and 8 x 2 h files
    python scripts/bench_memory.py --cases 1x2 8x2       # FILESxHOURS
    python scripts/bench_memory.py --format FLAC         # a third of the disk, slower to decode

Each case writes FILES generated 48 kHz stereo recordings of HOURS hours (16-bit WAV by
default: 1.4 GB per 2-hour file; FLAC when the disk is short) into a temporary folder, then
runs the real commands in child processes and reads each child's peak RSS from ``wait4``:

    prepare          tokenlm prepare (decode, resample, log-mel, write features)
    tokenize         tokenlm tokenize -K 16 with a small autoencoder and 1 epoch: training,
                     k-means and encoding (training memory grows with the corpus, not a file)
    tokenize encode  the same command again after removing RUN/tokens/k16: encoding only, the
                     step that decodes every file again

The target (issue 11): under 1.5 GB each, and the same for a 2-hour file as for a short one.
Which tokenlm runs is whatever ``python -m tokenlm`` imports: set PYTHONPATH to measure
another checkout. Generated files are deleted at the end (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 48000
RECIPE = """\
tokenizer:
  autoencoder: {hidden: [64, 32], bottleneck: 16}
  training: {epochs: 1, batch_size: 1024}
codebook: {niter: 5}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["1x0.25", "1x2", "8x2"], help="FILESxHOURS (default: %(default)s)")
    parser.add_argument("--format", default="WAV", choices=["WAV", "FLAC"], help="file format (default WAV, PCM_16)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and runs")
    parser.add_argument("--skip-tokenize", action="store_true", help="measure prepare only")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}: {shutil.disk_usage(work).free / 1e9:.0f} GB free; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'case':>10} {'audio':>9} {'step':<16} {'peak RSS':>9} {'wall':>7}")
    try:
        for case in args.cases:
            files, hours = case.split("x")
            run_case(work / case, int(files), float(hours), args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run_case(folder: Path, files: int, hours: float, args) -> None:
    data, run = folder / "data", folder / "run"
    ext = ".wav" if args.format == "WAV" else ".flac"
    for i in range(files):  # one class folder per file: each file is its own group
        write_recording(data / f"class{i % 2}" / f"rec{i}{ext}", hours, args.format, seed=i)
    label = f"{files}x{hours:g}h"
    audio = f"{files * hours:g} h"
    report(label, audio, "prepare", measure(["prepare", "--data", data, "--out", run]))
    if not args.skip_tokenize:
        recipe = folder / "recipe.yaml"
        recipe.write_text(RECIPE)
        command = ["tokenize", "--out", run, "-K", "16", "--config", recipe, "--device", "cpu"]
        report(label, audio, "tokenize", measure(command))
        shutil.rmtree(run / "tokens" / "k16")
        report(label, audio, "tokenize encode", measure(command))
    shutil.rmtree(data)  # the disk is needed by the next case


def write_recording(path: Path, hours: float, fmt: str, seed: int) -> None:
    """A chirping tone pair plus noise, written a minute at a time (never whole in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total, block = int(hours * 3600 * RATE), 60 * RATE
    with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16", format=fmt) as out:
        for start in range(0, total, block):
            t = (start + np.arange(min(block, total - start))) / RATE
            freq = 300 + 200 * seed + 150 * np.sin(2 * np.pi * t / 7.0)
            tone = 0.3 * np.sin(2 * np.pi * np.cumsum(freq) / RATE)
            noise = 0.02 * rng.standard_normal(len(t))
            out.write(np.stack([tone + noise, 0.5 * tone - noise], axis=1).astype(np.float32))


def measure(args: list) -> tuple[float, float]:
    """(peak RSS in GB, wall seconds) of ``python -m tokenlm ARGS`` in a child process."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: progress bars would fill a pipe
        start = time.perf_counter()
        # cwd: not a checkout, whose tokenlm `python -m` would import ahead of PYTHONPATH's
        child = subprocess.Popen([sys.executable, "-m", "tokenlm", *map(str, args)], env=env,
                                 cwd=tempfile.gettempdir(), stdout=log, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            log.seek(0)
            raise SystemExit(f"tokenlm {' '.join(map(str, args))} failed:\n{log.read()[-2000:]}")
    return usage.ru_maxrss / 1024**2, wall  # ru_maxrss is in KiB on Linux


def report(label: str, audio: str, step: str, result: tuple[float, float]) -> None:
    peak, wall = result
    print(f"{label:>10} {audio:>9} {step:<16} {peak:>7.2f} GB {wall:>6.0f} s", flush=True)


if __name__ == "__main__":
    main()
