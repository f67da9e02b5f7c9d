"""Tokenization throughput of a trained tokenizer, end to end from audio files, and peak memory.

    python scripts/bench_tokenizer.py --run runs/demo --data data/demo
    python scripts/bench_tokenizer.py                 # no run: synthesize a corpus, train a small tokenizer

End to end is what ``tokenlm tokenize`` does per clip (``tokenlm.tokenizer.encoding.encode_clips``): decode the file,
mix to mono and resample, log-mel, autoencoder, FAISS nearest centroid, append to the token
files. The figure is seconds of audio encoded per second of wall time ("x real time"); the
breakdown times each step on its own, one clip at a time, to show where the time goes.
Peak RSS is the high-water mark of this process while the corpus is being encoded.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import tokenlm  # noqa: E402,F401  first: sets OpenMP's passive waiting before torch loads it
from tokenlm.core.fileio import read_jsonl  # noqa: E402
from tokenlm.data.audio import prepare_waveform  # noqa: E402
from tokenlm.data.layouts import scan_dataset  # noqa: E402
from tokenlm.data.splits import SplitConfig, assign_splits
from tokenlm.run.rundir import AUTOENCODER_WEIGHTS, RunDir  # noqa: E402
from tokenlm.tokenizer.encoding import encode_clips  # noqa: E402
from tokenlm.tokenizer.tokenizer import AudioTokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run with a trained tokenizer (RUN/tokenizer)")
    parser.add_argument("--data", type=Path, help="audio to encode (default: the run's own clips)")
    parser.add_argument("-K", "--codebook-size", type=int, help="codebook to use (default: the run's current one)")
    parser.add_argument("--threads", type=int, default=2, help="torch and FAISS threads (default 2)")
    parser.add_argument("--batch-seconds", type=float, default=600.0, help="seconds of audio per encoding pass, as in tokenize")
    parser.add_argument("--limit", type=int, help="encode at most this many clips")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--synth-clips", type=int, default=400, help="clips to synthesize when there is no data")
    parser.add_argument("--synth-seconds", type=float, default=4.0, help="seconds per synthesized clip")
    parser.add_argument("--synth-k", type=int, default=256, help="codebook size of the tokenizer trained here")
    parser.add_argument("--synth-epochs", type=int, default=3, help="autoencoder epochs of the tokenizer trained here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from tokenlm.tokenizer.faiss_runtime import faiss

    faiss.omp_set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    data, run_dir = args.data, args.run
    if data is not None and not data.exists():
        print(f"{data} not found: synthesizing a corpus instead")
        data = None
    if run_dir is None or not (RunDir(run_dir).tokenizer / AUTOENCODER_WEIGHTS).is_file():
        if run_dir is not None:
            print(f"{run_dir} has no trained tokenizer: training a small one")
        if data is None:
            data = synthesize(work / "data", args.synth_clips, args.synth_seconds)
        run_dir = train_small_tokenizer(data, work / "run", args.synth_k, args.synth_epochs, args.threads)

    tokenizer = AudioTokenizer.load(RunDir(run_dir).tokenizer, codebook_size=args.codebook_size)
    if data is not None:
        _, clips = scan_dataset(data)
        clips = assign_splits(clips, SplitConfig())
        rows = [{"id": c.id, "path": c.path, "label": c.label, "split": c.split} for c in clips]
    else:
        rows = [r for r in read_jsonl(run_dir / "manifest.jsonl") if r["status"] == "ok"]
    rows = rows[: args.limit] if args.limit else rows
    seconds, rates = audio_seconds(rows)

    print(f"tokenizer: {tokenizer.info['codebook_dir']} (K={tokenizer.codebook_size}, "
          f"{tokenizer.code_rate:g} codes/s, bottleneck {tokenizer.centroids.shape[1]})")
    print(f"corpus:    {len(rows)} clips, {seconds:.0f} s of audio, file sample rates {sorted(rates)}")
    print(f"machine:   torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs visible, "
          f"load average {os.getloadavg()[0]:.1f} (timings on a shared machine are noisy)")

    encode_clips(tokenizer, rows[: min(8, len(rows))], _fresh(work / "warmup"), progress=False)  # warm-up

    rss_before = current_rss_mb()
    peak = PeakRss()
    start = time.perf_counter()
    with peak:
        meta = encode_clips(tokenizer, rows, _fresh(work / "tokens"), progress=False, batch_seconds=args.batch_seconds)
    wall = time.perf_counter() - start
    codes = sum(meta["tokens"].values())
    print(f"\nend to end (files -> tokens on disk): {wall:.2f} s for {seconds:.0f} s of audio = "
          f"{seconds / wall:.0f}x real time, {codes / wall:.0f} codes/s, {len(meta['skipped'])} skipped")
    print(f"memory:    RSS {rss_before:.0f} MB before encoding, peak {peak.mb:.0f} MB while encoding "
          f"(+{peak.mb - rss_before:.0f} MB; {peak.how})")

    breakdown(tokenizer, rows, seconds)


def breakdown(tokenizer: AudioTokenizer, rows: list[dict], seconds: float) -> None:
    """Each step timed on its own, one clip at a time, with one torch/FAISS thread (as
    ``encode_clips`` runs them) and no decoding threads alongside."""
    from tokenlm.tokenizer.faiss_runtime import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    times = dict.fromkeys(["decode (soundfile)", "mix + resample (soxr)", "log-mel (torch.stft)",
                           "autoencoder", "FAISS assign"], 0.0)
    keys = list(times)
    n = 0
    with torch.inference_mode():
        for row in rows:
            t0 = time.perf_counter()
            try:
                samples, rate = sf.read(row["path"], dtype="float32", always_2d=True)
            except Exception:
                continue
            t1 = time.perf_counter()
            try:
                wav = prepare_waveform(samples, rate, tokenizer.sample_rate)
            except Exception:
                continue
            t2 = time.perf_counter()
            frames = tokenizer.coder.log_mel(torch.from_numpy(wav))
            t3 = time.perf_counter()
            z = tokenizer.coder.embed_frames(frames).numpy()
            t4 = time.perf_counter()
            tokenizer.assigner.assign(z)
            t5 = time.perf_counter()
            for key, dt in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[key] += dt
            n += 1
    total = sum(times.values())
    print(f"\nbreakdown, one clip at a time, one thread ({n} clips; sum {total:.2f} s = "
          f"{seconds / total:.0f}x real time):")
    for key, dt in times.items():
        print(f"  {key:24s} {dt:7.3f} s  {100 * dt / total:5.1f}%  {seconds / max(dt, 1e-9):9.0f}x real time")


class PeakRss:
    """High-water mark of this process's RSS over a block: the kernel's own (VmHWM, reset by
    /proc/self/clear_refs) when allowed, else a 5 ms sampler of VmRSS."""

    def __enter__(self):
        self.how = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.how = "VmRSS sampled every 5 ms"
        self._samples = [current_rss_mb()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self._samples.append(current_rss_mb())

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        sampled = max(self._samples)
        self.mb = max(sampled, _status_mb("VmHWM")) if self.how == "VmHWM" else sampled


def current_rss_mb() -> float:
    return _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def audio_seconds(rows: list[dict]) -> tuple[float, set]:
    total, rates = 0.0, set()
    for row in rows:
        try:
            info = sf.info(row["path"])
        except Exception:
            continue
        total += info.frames / info.samplerate
        rates.add(info.samplerate)
    return total, rates


def synthesize(root: Path, clips: int, seconds: float, sample_rate: int = 16000) -> Path:
    """A folder-per-class corpus of tones, chirps, noise bursts and plucks (16 kHz mono, and
    every fifth clip at 44.1 kHz stereo so that resampling and mixing are in the path)."""
    rng = np.random.default_rng(0)
    labels = ("tone", "chirp", "noise", "pluck")
    print(f"synthesizing {clips} clips of {seconds:g} s into {root}")
    for i in range(clips):
        label = labels[i % len(labels)]
        sr = 44100 if i % 5 == 4 else sample_rate
        t = np.arange(int(seconds * sr)) / sr
        f0 = rng.uniform(100, 1000)
        if label == "tone":
            x = sum(0.2 / h * np.sin(2 * np.pi * f0 * h * t) for h in range(1, 5))
        elif label == "chirp":
            x = 0.3 * np.sin(2 * np.pi * (f0 + rng.uniform(200, 2000) * t) * t)
        elif label == "noise":
            x = 0.1 * rng.standard_normal(len(t)) * (1.2 + np.sin(2 * np.pi * rng.uniform(0.5, 4) * t))
        else:
            x = 0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-t * rng.uniform(1, 6) % seconds)
        x = x.astype(np.float32)
        if sr != sample_rate:
            x = np.stack([x, 0.7 * x], axis=1)
        (root / label).mkdir(parents=True, exist_ok=True)
        sf.write(root / label / f"{label}_{i:04d}.wav", x, sr, subtype="PCM_16")
    return root


def train_small_tokenizer(data: Path, run_dir: Path, k: int, epochs: int, threads: int) -> Path:
    from tokenlm.pipeline.prepare import prepare
    from tokenlm.pipeline.tokenize import fit_codebook_stage, train_autoencoder_stage
    from tokenlm.tokenizer.codebook import CodebookConfig
    from tokenlm.tokenizer.tokenizer import AutoencoderTraining, TokenizerConfig

    print(f"training a tokenizer (default autoencoder, {epochs} epochs, K={k}) into {run_dir}")
    config = TokenizerConfig(codebook_size=k, training=AutoencoderTraining(epochs=epochs))
    torch.set_num_threads(1)  # not what is measured; one thread is the safe choice on a busy machine
    prepare(data, run_dir, progress=False)
    device = torch.device("cpu")
    train_autoencoder_stage(run_dir, config.autoencoder, config.training, device=device, progress=False)
    fit_codebook_stage(run_dir, k, CodebookConfig(), device=device)
    RunDir(run_dir).set_codebook_size(k)
    torch.set_num_threads(threads)
    return run_dir


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    main()
