"""Stage 1: dataset -> manifest + log-mel features of every clip, streamed.

Writes RUN/features/ ({split}.bin float16 frames, {split}.index.jsonl, meta.json with the
feature config and train-only normalisation statistics) and RUN/manifest.jsonl (one line per
input clip with its status and, for skipped clips, the reason).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
from tqdm import tqdm

from tokenlm.artifacts import Stage, fingerprint, read_jsonl, write_json, write_jsonl
from tokenlm.audio import audio_seconds
from tokenlm.config import to_dict
from tokenlm.datasets import SPLITS, Clip, SplitConfig, assign_splits, scan_dataset
from tokenlm.errors import AudioError, TokenlmError
from tokenlm.features import FeatureConfig, LogMel, RunningStats, file_log_mel
from tokenlm.runtime import bounded_map, cpu_threads, kernel_threads
from tokenlm.pipeline import RunContext
from tokenlm.rundir import MANIFEST, META, RunDir
from tokenlm.store import RaggedWriter

# Audio in flight while featurising (clips are decoded in blocks, but each clip's frames are
# held until written): 4 hours is ~370 MB of float32 log-mel at 100 frames/s x 64 mels.
AHEAD_SECONDS = 4 * 3600.0


def prepare(
    data: str | Path,
    run: str | Path,
    features: FeatureConfig = FeatureConfig(),
    split: SplitConfig = SplitConfig(),
    *,
    strict: bool = False,
    progress: bool = True,
) -> Path:
    """Scan ``data``, split it, and write log-mel features of every usable clip into ``run``.

    Unusable clips are skipped and recorded in the manifest; with ``strict`` any skip is an
    error (raised after the manifest is written, so the reasons can be read).
    """
    run = RunDir(run)
    layout, clips = scan_dataset(data)
    clips = assign_splits(clips, split)
    stage = Stage(
        run.features,
        config={"features": to_dict(features), "split": to_dict(split), "layout": layout},
        inputs={"data": _fingerprint_files(clips)},
    )

    def make(work: Path) -> dict:
        manifest, meta = _extract(clips, features, work, progress)
        meta.update(layout=layout, data=str(data))
        write_json(work / META, meta)
        write_jsonl(work / MANIFEST, manifest)
        run.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / MANIFEST, run.manifest)
        _print_summary(manifest)
        if strict:
            _check_strict(run.manifest)
        _say(f"features: {stage.out_dir}\nmanifest: {run.manifest}")
        return {"clips_ok": meta["clips_ok"], "clips_skipped": meta["clips_skipped"]}

    if stage.up_to_date("features"):
        if strict:
            _check_strict(run.manifest)
        return stage.out_dir
    return stage.build("features", make)


def _extract(clips: list[Clip], features: FeatureConfig, work: Path, progress: bool):
    """Decode and featurise every clip; returns (manifest rows, meta dict)."""
    log_mel = LogMel(features)
    stats = RunningStats(features.n_mels)
    writers = {name: RaggedWriter(work, name, "float16", width=features.n_mels) for name in SPLITS}
    manifest = []

    def featurise(clip: Clip):
        # Decoded block by block: memory is a block of audio plus the clip's frames. Shorter
        # than one STFT window is unusable; shorter than a patch is padded later and flagged.
        try:
            return file_log_mel(clip.path, log_mel, min_samples=features.n_fft), None
        except AudioError as err:
            return None, err.reason

    # Clips are featurised in parallel, one clip per thread: decoding, soxr and torch all
    # release the GIL. torch's own intra-op threads are turned off meanwhile: on a clip-sized
    # STFT they cost more than they give, and with every core busy their spin-waits made
    # log-mel 100x slower. The ordered, bounded map keeps the output deterministic and the
    # memory flat: at most `ahead` clips and AHEAD_SECONDS of audio in flight (one clip
    # always), however far decoding runs ahead and however long the recordings.
    workers = min(cpu_threads(), 8)
    with kernel_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        results = bounded_map(pool, featurise, clips, ahead=2 * workers,
                              weight=lambda clip: audio_seconds(clip.path), budget=AHEAD_SECONDS)
        for clip, (result, error) in tqdm(zip(clips, results), total=len(clips), desc="features",
                                          unit="clip", disable=not progress):
            row = {"id": clip.id, "path": clip.path, "label": clip.label, "split": clip.split,
                   "group": clip.group, "fold": clip.fold}
            if error is not None:
                manifest.append({**row, "duration": None, "status": "skipped", "reason": error})
                continue
            frames, num_samples = result
            writers[clip.split].add(
                {"id": clip.id, "label": clip.label, "group": clip.group, "fold": clip.fold,
                 "padded": frames.shape[0] < features.patch_frames},
                frames,
            )
            if clip.split == "train":
                stats.update(frames)
            manifest.append({**row, "duration": round(num_samples / features.sample_rate, 4),
                             "status": "ok", "reason": None})
    for writer in writers.values():
        writer.close()
    ok = [m for m in manifest if m["status"] == "ok"]
    if not any(m["split"] == "train" for m in ok):
        raise TokenlmError("no usable clip in the train split: nothing to learn from (see the manifest)")
    meta = {
        **to_dict(features),
        "norm": stats.result(),
        "classes": sorted({m["label"] for m in ok if m["label"] is not None}),
        "clips_ok": len(ok),
        "clips_skipped": len(manifest) - len(ok),
        "splits": {s: sum(1 for m in ok if m["split"] == s) for s in SPLITS},
        "seconds": {s: round(sum(m["duration"] for m in ok if m["split"] == s), 2) for s in SPLITS},
    }
    return manifest, meta


def _fingerprint_files(clips: list[Clip]) -> str:
    """Cheap identity of the input files: path, size and mtime (not their bytes, which for a
    large corpus would take longer to hash than to featurise) plus labels and splits."""
    entries = []
    for c in clips:
        try:
            st = os.stat(c.path)
            entries.append((c.id, c.path, c.label, c.split, st.st_size, st.st_mtime_ns))
        except OSError:
            entries.append((c.id, c.path, c.label, c.split, None, None))
    return fingerprint(entries)


def _print_summary(manifest: list[dict]) -> None:
    ok = sum(1 for m in manifest if m["status"] == "ok")
    reasons = Counter(m["reason"].split(" (")[0] for m in manifest if m["status"] != "ok")
    line = f"{ok} clips ok, {len(manifest) - ok} skipped"
    if reasons:
        line += ": " + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    _say(line)


def _check_strict(manifest_path: Path) -> None:
    skipped = [m for m in read_jsonl(manifest_path) if m["status"] != "ok"]
    if skipped:
        first = skipped[0]
        raise TokenlmError(f"--strict: {len(skipped)} clip(s) skipped, e.g. {first['path']}: {first['reason']}")


def _say(text: str) -> None:
    click.echo(text, err=True)


@click.command("prepare")
@click.option("--data", "data", type=click.Path(), help="Dataset folder or manifest file.")
@click.option("--out", "run", type=click.Path(), help="Run directory.")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (sections: data, features, split).")
@click.option("--strict", is_flag=True, default=None, help="Fail if any clip is skipped.")
def command(data, run, recipe, strict):
    """Scan a dataset, split it and compute log-mel features into RUN/features."""
    if not recipe and not (data and run):
        raise TokenlmError("need --data and --out (or a recipe with data.path and run.dir)")
    ctx = RunContext.create(run, recipe)
    _prepare(ctx, data=data, strict=strict)


def run(ctx: RunContext) -> None:
    _prepare(ctx)


def _prepare(ctx: RunContext, data: str | None = None, strict: bool | None = None) -> Path:
    section = ctx.section("data")
    data = data or section.get("path")
    if not data:
        raise TokenlmError("need --data (or a recipe with data.path)")
    return prepare(data, ctx.run, ctx.config(FeatureConfig, "features"), ctx.config(SplitConfig, "split"),
                   strict=bool(strict if strict is not None else section.get("strict", False)),
                   progress=ctx.progress)
