"""Every stage at 1, 10 and 100 hours of audio, each in its own process: wall time, CPU time,
peak RSS and disk, to see which stage stops being flat as the corpus grows.

    python scripts/bench_hours.py                                  # 1, 10, 100 h
    python scripts/bench_hours.py --hours 1,10 --code /work/base   # the same stages on other code
    python scripts/bench_hours.py --smoke                          # tiny sizes, seconds (the test)

The corpus is cheap: an H-hour corpus is a manifest listing the files of a 1 h corpus (``tokenlm
data corpus --hours 1``, rendered once into ``--corpus`` unless it is there) H times over under
new ids, so 100 h costs a manifest, not 11.5 GB of WAV (the audio is the same hour 100 times:
the costs measured here do not depend on what the audio says). At each size, in order, each
stage in a fresh process (``--stage``) whose peak RSS is its VmHWM and whose CPU time is its own
and its children's:

    prepare      manifest + log-mel features of the H hours (``tokenlm prepare``)
    autoencoder  the tokenizer's autoencoder (``--epochs``; with ``--max-patches``, on a
                 seeded sample of that many train patches: ``tokenizer.training.max_patches``)
    codebook     K-means on the bottlenecks + code metrics
    encode_run   the run's own clips -> codes
    lm_open      opening the LM's stores and building its batches and validation batches
    pretrain     the code LM, ``--lm-steps`` steps
    encode_new   the same H hours encoded as new data with the trained tokenizer
                 (``tokenlm tokenize OUT --tokenizer RUN/tokenizer --data ...``)
    vocoder      the WaveNet decoder, ``--vocoder-steps`` steps
    probe        linear probes on one labelled task (``--task``; no CNN baselines)

Then the disk the run holds (features, tokens, everything). ``--code DIR`` runs the stages with
``PYTHONPATH=DIR``: another checkout (e.g. the code before a change) measured the same way;
options it does not know (``--max-patches``) are left out with ``--max-patches 0``. Results go
to OUT/results.json; OUT/h{H} is each size's run, removed after it is measured unless ``--keep``.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "autoencoder", "codebook", "encode_run", "lm_open", "pretrain", "encode_new", "vocoder", "probe")


# ---- one stage, in its own process --------------------------------------------------------

def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, whose count starts at exec (getrusage's ru_maxrss would
    carry the parent's peak over fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _cli(*args) -> None:
    from tokenlm.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        if exit_.code:
            raise RuntimeError(f"tokenlm {' '.join(map(str, args))} exited with {exit_.code}") from None


def _stage(name: str, work: Path, settings: dict) -> None:
    """Run stage ``name`` of the size whose folder is ``work``, with the tokenlm on PYTHONPATH."""
    import torch

    torch.set_num_threads(1)
    run, recipe, data, k = work / "run", work.parent / "recipe.yaml", work / "data", settings["k"]
    device = torch.device("cpu")
    if name == "prepare":
        _cli("prepare", run, "--data", data, "--config", recipe, "--allow-outside")
    elif name == "autoencoder":
        from tokenlm.models.autoencoder import AutoencoderConfig
        from tokenlm.pipeline.tokenize import train_autoencoder_stage
        from tokenlm.tokenizer.tokenizer import AutoencoderTraining

        training = {"epochs": settings["epochs"], "batch_size": 256, "patience": 0}
        if settings["max_patches"]:
            training["max_patches"] = settings["max_patches"]
        train_autoencoder_stage(run, AutoencoderConfig(hidden=tuple(settings["hidden"]), bottleneck=settings["bottleneck"]),
                                AutoencoderTraining(**training), device=device, progress=False)
    elif name == "codebook":
        from tokenlm.pipeline.tokenize import fit_codebook_stage
        from tokenlm.tokenizer.codebook import CodebookConfig

        fit_codebook_stage(run, k, CodebookConfig(niter=settings["niter"], gpu="never"), device=device)
    elif name == "encode_run":
        from tokenlm.pipeline.tokenize import encode_run_stage
        from tokenlm.run.rundir import RunDir

        encode_run_stage(run, k, device=device, progress=False)
        RunDir(run).set_codebook_size(k)
    elif name == "lm_open":
        _lm_open(run, k, settings)
    elif name == "pretrain":
        _cli("pretrain", run, "-K", k, "--config", recipe, "--device", "cpu", "--no-progress")
    elif name == "encode_new":
        _cli("tokenize", work / "new", "--tokenizer", run / "tokenizer", "--data", data, "-K", k, "--allow-outside",
             "--device", "cpu")
    elif name == "vocoder":
        _cli("vocoder", run, "-K", k, "--config", recipe, "--device", "cpu", "--no-progress")
    elif name == "probe":
        _cli("probe", run, "--task", settings["task"], "--baselines", "none", "--no-folds", "--config", recipe,
             "-K", k, "--device", "cpu", "--no-progress")
    else:
        raise ValueError(f"no stage {name}")


def _lm_open(run: Path, k: int, settings: dict) -> None:
    """What pretrain does before its first step: open the token stores, check the codes, build
    the packed batches and the validation batches; the seconds it took go to stdout."""
    from tokenlm.data.store import RaggedSplit
    from tokenlm.pipeline.pretrain import PackedClips, validation_batches
    from tokenlm.run.rundir import SPLITS, RunDir

    start = time.perf_counter()
    tokens = RunDir(run).tokens(k)
    splits = {name: RaggedSplit(tokens, name, "uint16") for name in SPLITS}
    for split in splits.values():
        if len(split.data):
            int(split.data.max())
    PackedClips(splits["train"], k, settings["context"])
    if len(splits["val"].data):
        validation_batches(splits["val"], k, settings["context"], 8)
    print(json.dumps({"lm_open_s": time.perf_counter() - start}))


def _child(name: str, work: Path, settings: dict) -> None:
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    _stage(name, work, settings)
    print("BENCH " + json.dumps({"stage": name, "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_seconds() - cpu0,
                                 "peak_rss_mb": _peak_rss_mb()}), flush=True)


# ---- the corpus, the recipe, the sizes ----------------------------------------------------

def _source_corpus(path: Path, smoke: bool) -> Path:
    """The 1 h corpus the sizes repeat (rendered once), or in smoke mode a few seconds of tones."""
    if (path / "manifest.csv").is_file():
        return path
    if smoke:
        _write_tones(path, labels=("a", "b"), per_label=3, seconds=4.0, manifest=True)
        return path
    print(f"rendering a 1 h corpus into {path} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "tokenlm", "data", "corpus", "--out", str(path), "--hours", "1"], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return path


def _write_tones(root: Path, labels, per_label: int, seconds: float, manifest: bool = False) -> None:
    """Noisy tones, one pitch per label: a labelled folder (DIR/<label>/*.wav) or a manifest corpus."""
    import numpy as np
    import soundfile as sf

    rows = []
    for n, label in enumerate(labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            rng = np.random.default_rng(100 * n + i)
            t = np.arange(int(16000 * seconds)) / 16000
            wav = 0.3 * np.sin(2 * np.pi * (220 * (n + 1) + 15 * i) * t) + 0.05 * rng.standard_normal(len(t))
            sf.write(root / label / f"{label}{i}.wav", wav.astype(np.float32), 16000, subtype="PCM_16")
            rows.append({"path": f"{label}/{label}{i}.wav"})
    if manifest:
        with open(root / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path"])
            writer.writeheader()
            writer.writerows(rows)


def _corpus_seconds(corpus: Path) -> float:
    import soundfile as sf

    with open(corpus / "manifest.csv") as f:
        return sum(sf.info(str(corpus / r["path"])).duration for r in csv.DictReader(f))


def _repeated_manifest(corpus: Path, copies: int, out: Path) -> None:
    """``out/manifest.csv``: the corpus's files ``copies`` times over, under new ids."""
    with open(corpus / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "path"])
        writer.writeheader()
        for copy in range(copies):
            writer.writerows({"id": f"c{copy}/{r['path']}", "path": str((corpus / r["path"]).resolve())} for r in rows)


def _recipe(settings: dict) -> str:
    s = settings
    return f"""\
split: {{val_fraction: 0.05, test_fraction: 0.1, seed: 0}}  # the probe's task needs test clips
lm:
  n_layer: 2
  n_head: 2
  n_embd: 64
  context: {s['context']}
  training: {{steps: {s['lm_steps']}, batch_size: 8, warmup_steps: 1, eval_every: {s['lm_steps']}, patience: 0, seed: 0}}
vocoder:
  layers_per_cycle: 4
  cycles: 1
  residual_channels: 16
  gate_channels: 32
  skip_channels: 32
  cond_channels: 16
  crop_codes: 4
  val_crops: 4
  metrics_clips: 1
  metrics_seconds: 0.5
  training: {{steps: {s['vocoder_steps']}, batch_size: 4, warmup_steps: 1, eval_every: {s['vocoder_steps']}, seed: 0}}
probe:
  baselines: []
"""


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def _measure(name: str, work: Path, settings: dict, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", name, str(work), json.dumps(settings)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    result = next((json.loads(line[6:]) for line in lines if line.startswith("BENCH ")), None)
    if done.returncode or result is None:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        return {"stage": name, "error": f"exit {done.returncode}: {tail}"}
    for line in lines:  # a stage's own figures (lm_open's seconds)
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", nargs=3, metavar=("NAME", "WORK", "SETTINGS"), help=argparse.SUPPRESS)
    parser.add_argument("--hours", default="1,10,100", help="sizes, in hours of the source corpus. [1,10,100]")
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "bench_hours" / "corpus-1h")
    parser.add_argument("--task", type=Path, default=ROOT / "data" / "demo",
                        help="labelled task the probe reads (tokenlm data demo --out data/demo). [data/demo]")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "bench_hours" / "out")
    parser.add_argument("--code", type=Path, default=ROOT, help="the tokenlm checkout whose stages run. [this one]")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--epochs", type=int, default=1, help="autoencoder epochs. [1]")
    parser.add_argument("--max-patches", type=int, default=72000,
                        help="tokenizer.training.max_patches (0: not given, every patch). [72000: an hour]")
    parser.add_argument("--lm-steps", type=int, default=20)
    parser.add_argument("--vocoder-steps", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep each size's run folder")
    parser.add_argument("--reuse", action="store_true",
                        help="measure --stages on the run folders a --keep run left (e.g. one stage again)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and models: seconds")
    args = parser.parse_args(argv)
    if args.stage:
        _child(args.stage[0], Path(args.stage[1]), json.loads(args.stage[2]))
        return 0
    settings = {"k": 256, "epochs": args.epochs, "max_patches": args.max_patches, "hidden": [512, 256],
                "bottleneck": 64, "niter": 25, "context": 512, "lm_steps": args.lm_steps,
                "vocoder_steps": args.vocoder_steps}
    if args.smoke:
        settings.update(k=8, hidden=[32, 16], bottleneck=8, niter=5, context=32, lm_steps=2, vocoder_steps=2,
                        max_patches=min(args.max_patches, 200) if args.max_patches else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = _source_corpus(args.corpus.resolve(), args.smoke)
    task = args.task.resolve()
    if args.smoke and not task.is_dir():
        _write_tones(task, labels=("low", "mid", "high"), per_label=6, seconds=1.0)
    settings["task"] = str(task)
    (args.out / "recipe.yaml").write_text(_recipe(settings))
    source_h = _corpus_seconds(corpus) / 3600
    sizes = [float(h) for h in args.hours.split(",")] if not args.smoke else [source_h, 2 * source_h]
    stages = [s for s in args.stages.split(",") if s]
    results = []
    print(f"code {args.code}; source corpus {source_h:.3f} h ({corpus}); load {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs", flush=True)
    for hours in sizes:
        copies = max(1, round(hours / source_h))
        work = args.out / f"h{hours:g}"
        if work.exists() and not args.reuse:
            shutil.rmtree(work)
        _repeated_manifest(corpus, copies, work / "data")
        for name in stages:
            row = {"hours": copies * source_h, **_measure(name, work, settings, args.code),
                   "load": os.getloadavg()[0]}
            results.append(row)
            print(json.dumps(row), flush=True)
            if "error" in row:
                break
        disk = {"hours": copies * source_h, "stage": "disk", "features_bytes": _disk(work / "run" / "features"),
                "features_bin_bytes": sum(p.stat().st_size for p in (work / "run" / "features").glob("*.bin")),
                "tokens_bytes": _disk(work / "run" / "tokens"), "run_bytes": _disk(work / "run"),
                "new_bytes": _disk(work / "new")}
        results.append(disk)
        print(json.dumps(disk), flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        if not args.keep:
            shutil.rmtree(work)
    _table(results)
    return 1 if any("error" in r for r in results) else 0


def _table(results: list[dict]) -> None:
    print(f"\n{'hours':>7} {'stage':<12} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
    for r in results:
        if r["stage"] == "disk":
            print(f"{r['hours']:>7.3g} {'disk':<12} features {r['features_bytes'] / 1e6:.1f} MB, tokens "
                  f"{r['tokens_bytes'] / 1e6:.2f} MB, run {r['run_bytes'] / 1e6:.1f} MB")
        elif "error" in r:
            print(f"{r['hours']:>7.3g} {r['stage']:<12} failed: {r['error'].splitlines()[-1]}")
        else:
            print(f"{r['hours']:>7.3g} {r['stage']:<12} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_rss_mb']:>8.0f}"
                  + (f"  (stores opened in {r['lm_open_s']:.2f} s)" if "lm_open_s" in r else ""))


if __name__ == "__main__":
    sys.exit(main())
