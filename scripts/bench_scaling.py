"""Where each stage's cost goes as the pretraining corpus grows (docs/scaling.md).

    nice -n 10 python scripts/bench_scaling.py                         # 0.25, 0.5, 1, 2 h of data/corpus-2h
    nice -n 10 python scripts/bench_scaling.py --hours 0.25,0.5,1 --corpus data/corpus --out /tmp/scaling

For each size H it writes a manifest of the corpus's first clips adding up to H hours (the
subsets are nested prefixes; the audio is read where it lies, never copied) and runs, in a
fresh process per size, the stages one after the other with the demo recipe's settings:

    prepare    decode + log-mel of every clip                      grows with the corpus
    autoenc    autoencoder, a fixed number of epochs (no early     grows with the corpus
               stopping, so only the data changes the cost)
    codebook   bottlenecks of the train split + FAISS k-means on   bounded sample: flat once
               at most K x points_per_centroid vectors             the corpus exceeds it
    encode     every clip through autoencoder + codebook           grows with the corpus
    pretrain   the code LM, a fixed number of steps; validation    flat per step (+ val and the
               and final metrics score the whole val split         count references: linear)
    probe      one fixed labelled task (instruments), no CNNs      flat (the task, not the corpus)

It records each stage's wall seconds and CPU seconds (this process's and its children's, from
getrusage: on a shared machine the CPU seconds are the figure to compare). Everything runs on
one thread (OMP_NUM_THREADS=1), so CPU seconds count work rather than OpenMP threads
spin-waiting for a core another program holds. At the end it fits cost ~ hours^b per stage
(least squares on log-log, and between the two largest sizes, where fixed costs weigh least),
prints a table and writes OUT/scaling.json. Use a fresh ``--out``: a stage already built there
is up to date, skipped, and costs nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "autoenc", "codebook", "encode", "pretrain", "probe")


def cpu_seconds() -> float:
    """User + system CPU of this process and of its waited-for children."""
    return sum(u.ru_utime + u.ru_stime
               for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def write_subset(corpus: Path, hours: float, out: Path) -> dict:
    """out/manifest.csv: the corpus's first clips adding up to ``hours`` (absolute paths), and
    its duration."""
    with open(corpus / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kept, seconds = [], 0.0
    for row in rows:
        if seconds >= hours * 3600:
            break
        kept.append(row)
        seconds += float(row["seconds"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path"])
        writer.writeheader()
        writer.writerows({"path": str((corpus / r["path"]).resolve())} for r in kept)
    return {"clips": len(kept), "audio_hours": seconds / 3600}


def run_size(data: Path, run: Path, task: Path, args) -> dict:
    """Every stage on one subset, in this process; {stage: {wall_s, cpu_s}} plus sizes."""
    import torch

    from tokenlm.data.features import FeatureConfig
    from tokenlm.data.splits import SplitConfig
    from tokenlm.models.autoencoder import AutoencoderConfig
    from tokenlm.models.gpt import LMConfig
    from tokenlm.pipeline.prepare import prepare
    from tokenlm.pipeline.pretrain import pretrain
    from tokenlm.pipeline.probe import probe_tasks
    from tokenlm.pipeline.probe_config import BaselinesConfig, ProbeConfig
    from tokenlm.pipeline.tasks import task_at
    from tokenlm.pipeline.tokenize import encode_run_stage, fit_codebook_stage, train_autoencoder_stage
    from tokenlm.run.rundir import RunDir
    from tokenlm.tokenizer.codebook import CodebookConfig
    from tokenlm.tokenizer.tokenizer import AutoencoderTraining
    from tokenlm.training import TrainConfig

    torch.set_num_threads(1)
    device = torch.device("cpu")
    rd = RunDir(run)
    features = FeatureConfig(sample_rate=16000, n_fft=400, hop_length=160, n_mels=64, patch_frames=5)
    steps = {
        "prepare": lambda: prepare(data, run, features, SplitConfig(val_fraction=0.05, test_fraction=0.0),
                                   progress=False, allow_outside=True),
        "autoenc": lambda: train_autoencoder_stage(
            rd, AutoencoderConfig(hidden=(512, 256), bottleneck=64),
            AutoencoderTraining(epochs=args.epochs, batch_size=256, lr=1e-3, patience=0), device=device,
            progress=False),
        "codebook": lambda: fit_codebook_stage(rd, 256, CodebookConfig(niter=25, points_per_centroid=256),
                                               device=device),
        "encode": lambda: encode_run_stage(rd, 256, device=device, progress=False),
        "pretrain": lambda: pretrain(run, LMConfig(n_layer=4, n_head=4, n_embd=256, context=512),
                                     TrainConfig(steps=args.lm_steps, batch_size=8, lr=1e-3, warmup_steps=5,
                                                 eval_every=args.lm_steps, device="cpu"), k=256, progress=False),
        "probe": lambda: probe_tasks(rd, [task_at(rd, task, "instruments")], ProbeConfig(), BaselinesConfig(),
                                     device="cpu", progress=False),
    }
    costs = {}
    for name in STAGES:
        wall, cpu = time.perf_counter(), cpu_seconds()
        steps[name]()
        costs[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(cpu_seconds() - cpu, 2),
                       "load": os.getloadavg()[0]}
        if name == "encode":
            rd.set_codebook_size(256)
        print(f"  {name:9s} wall {costs[name]['wall_s']:8.1f} s  cpu {costs[name]['cpu_s']:8.1f} s", flush=True)
    return costs


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-3)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", default="0.25,0.5,1,2")
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "corpus-2h")
    parser.add_argument("--task", type=Path, default=REPO / "data" / "demo", help="the fixed probe task")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tokenlm-bench-scaling")
    parser.add_argument("--epochs", type=int, default=5, help="autoencoder epochs (fixed)")
    parser.add_argument("--lm-steps", type=int, default=15, help="LM steps (fixed)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one size, in a fresh process
    args = parser.parse_args(argv)

    if args.one:
        folder = args.out / f"h{args.one}"
        costs = run_size(folder / "data", folder / "run", args.task, args)
        (folder / "costs.json").write_text(json.dumps(costs, indent=1))
        return 0

    sizes = [float(h) for h in args.hours.split(",")]
    if not (args.corpus / "manifest.csv").is_file():  # a fresh clone: render it once (offline)
        print(f"rendering a {max(sizes):g} h corpus into {args.corpus} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "tokenlm", "data", "corpus", "--out", str(args.corpus),
                        "--hours", f"{max(sizes) * 1.1:g}"], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if not args.task.is_dir():  # the fixed probe task: the demo's instruments
        subprocess.run([sys.executable, "-m", "tokenlm", "data", "demo", "--out", str(args.task)], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    results = []
    for hours in sizes:
        folder = args.out / f"h{hours:g}"
        subset = write_subset(args.corpus, hours, folder / "data")
        print(f"{hours:g} h: {subset['clips']} clips, {subset['audio_hours']:.3f} h; load {os.getloadavg()}",
              flush=True)
        command = [sys.executable, __file__, "--one", f"{hours:g}", "--out", str(args.out), "--task", str(args.task),
                   "--epochs", str(args.epochs), "--lm-steps", str(args.lm_steps)]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        costs = json.loads((folder / "costs.json").read_text())
        results.append({"hours": hours, **subset, "load": os.getloadavg()[0], "costs": costs})

    xs = [r["audio_hours"] for r in results]
    exponents = {name: {kind: round(slope(xs, [r["costs"][name][kind] for r in results]), 2)
                        for kind in ("cpu_s", "wall_s")} for name in STAGES}
    for name in STAGES:
        exponents[name]["cpu_s_last_two"] = round(slope(xs[-2:], [r["costs"][name]["cpu_s"] for r in results[-2:]]), 2)
    (args.out / "scaling.json").write_text(json.dumps({"sizes": results, "exponents": exponents}, indent=1))
    print("\n| stage | " + " | ".join(f"{x:.2f} h cpu / wall s" for x in xs) + " | b (cpu) | b (cpu, last two) |")
    print("|---|" + "---|" * (len(xs) + 2))
    for name in STAGES:
        cells = [f"{r['costs'][name]['cpu_s']:.1f} / {r['costs'][name]['wall_s']:.1f}" for r in results]
        print(f"| {name} | " + " | ".join(cells) + f" | {exponents[name]['cpu_s']:.2f} | {exponents[name]['cpu_s_last_two']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
