"""Stage 1: dataset -> manifest + log-mel features of every clip, streamed.

Writes RUN/features/ ({split}.bin float16 frames, or their shards under --engine ray:
tokenlm.data.store; {split}.index.jsonl, meta.json with the feature config and train-only
normalisation statistics, and manifest.jsonl: one line per input clip with its absolute path,
the file's stamp, its status and, for skipped clips or scanned entries that could not be
clips, the reason). RUN/manifest.jsonl is a copy of the finished
stage's manifest, written when the stage finishes or is found up to date, never before: the
stages that read the manifest read the features' own copy (``rundir.read_manifest``).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tokenlm.core.config import build, to_dict
from tokenlm.core.errors import AudioError, ConfigError, TokenlmError
from tokenlm.core.fileio import fingerprint, read_jsonl, write_json, write_jsonl
from tokenlm.core.outputs import publish_copy
from tokenlm.core.progress import progress_bar
from tokenlm.core.runtime import bounded_map, cpu_threads, kernel_threads
from tokenlm.data.audio import audio_seconds, audio_source
from tokenlm.data.clips import SPLITS, Clip
from tokenlm.data.features import FeatureConfig, LogMel, RunningStats, file_log_mel, log_mel_blocks
from tokenlm.data.files import file_stamp
from tokenlm.data.input_content import settled_stamps
from tokenlm.data.layouts import scan_sources, source_text
from tokenlm.data.splits import SplitConfig, assign_splits, link_duplicates
from tokenlm.data.store import RaggedWriter, close_shards, write_shard_list
from tokenlm.engine import LOCAL, EngineConfig, blocks, engine_config, engine_session
from tokenlm.pipeline.tasks import Task
from tokenlm.run import lock as runlock
from tokenlm.run.artifacts import Stage
from tokenlm.run.input_check import run_input_hashes
from tokenlm.run.rundir import MANIFEST, META, STAGE_FILE, RunDir, as_run, is_finished, read_feature_meta

if TYPE_CHECKING:  # the context imports the tasks, which import this module
    from tokenlm.pipeline.registry import RunContext

# Clips longer than this are featurised block by block in the writing thread, each block's
# frames written as they come, so memory does not grow with a recording's length. Shorter ones
# are featurised whole in parallel threads, at most AHEAD_SECONDS of audio in flight: half an
# hour is ~46 MB of float32 log-mel at 100 frames/s x 64 mels.
STREAM_SECONDS = 300.0


AHEAD_SECONDS = 1800.0


def prepare(
    data: str | Path | list,
    run: str | Path,
    features: FeatureConfig = FeatureConfig(),
    split: SplitConfig = SplitConfig(),
    *,
    strict: bool = False,
    progress: bool = True,
    hash_content: bool = False,
    allow_outside: bool = False,
    engine: EngineConfig = LOCAL,
) -> Path:
    """Scan ``data`` (a dataset, or a list of them pooled), split it, and write log-mel features of every usable clip into ``run``.

    Unusable clips are skipped and recorded in the manifest; with ``strict`` any skip is an
    error, and the stage is left unfinished (the error names the manifest with the reasons).
    Input files are identified by size, times and inode, and by a hash of their bytes with
    ``hash_content``. Paths a manifest lists outside its folder need ``allow_outside``.
    ``engine`` says where the clips are featurised (``tokenlm.engine``): the same bytes either way.
    """
    run = as_run(run)
    scan_skipped: list[dict] = []
    layout, clips = scan_sources(data, allow_outside=allow_outside, skipped=scan_skipped)
    hashes, paths = run_input_hashes(run), {c.id: c.path for c in clips}
    previous = {i: row for i, row in _previous_rows(run).items() if row["path"] == paths.get(i)}
    files = settled_stamps({c.id: file_stamp(c.path, hash_content) for c in clips}, previous, hashes)
    clips, duplicates = link_duplicates(clips, {i: f["sha256"] for i, f in files.items() if f and "sha256" in f})
    clips = assign_splits(clips, split)
    stage = Stage(
        run.features,
        config={"features": to_dict(features), "split": to_dict(split), "layout": layout},
        inputs={"data": fingerprint([[(c.id, c.path, c.label, c.split, files[c.id], *c.span().values())
                                       for c in clips], scan_skipped])},
        lock_root=run.lock_root,
    )

    def make(work: Path) -> dict:
        manifest, meta = _extract(clips, features, work, progress, engine)
        manifest = [{**row, "file": files[row["id"]]} for row in manifest] + [
            {"id": None, "path": s["path"], "label": None, "split": None, "group": None, "fold": None,
             "duration": None, "status": "skipped", "reason": s["reason"], "file": None} for s in scan_skipped]
        meta.update(layout=layout, data=source_text(data), clips_skipped=meta["clips_skipped"] + len(scan_skipped),
                    duplicates=duplicates)
        write_json(work / META, meta)
        write_jsonl(work / MANIFEST, manifest)
        _print_summary(manifest)
        _report_duplicates(clips, duplicates)
        if strict:
            check_strict(work / MANIFEST)
        return {"clips_ok": meta["clips_ok"], "clips_skipped": meta["clips_skipped"]}

    with runlock.holding(stage.run_root):  # the copy in RUN is published under the lock, as the stage is
        hashes.save()
        if stage.up_to_date("features"):
            if strict:
                check_strict(stage.out_dir / MANIFEST)
            publish_run_manifest(run.features / MANIFEST, run.manifest)
        else:  # build()'s own up-to-date check would read stage.json and stat every file again
            stage.finish(make(stage.start()))
            publish_run_manifest(run.features / MANIFEST, run.manifest)
            _say(f"features: {stage.out_dir}\nmanifest: {run.manifest}")
    return stage.out_dir


def _previous_rows(run: RunDir) -> dict[str, dict]:
    """Clip id -> row of the finished features' manifest (none when there are no features)."""
    if not (run.features / STAGE_FILE).is_file() or not (run.features / MANIFEST).is_file():
        return {}
    return {row["id"]: row for row in read_jsonl(run.features / MANIFEST) if row.get("id") is not None}


def publish_run_manifest(source: Path, dest: Path) -> None:
    """RUN/manifest.jsonl := a finished stage's manifest (never over a file that is not a
    manifest tokenlm wrote: one from before outputs were recorded has a status on every row)."""
    publish_copy(source, dest, legacy=_is_run_manifest)


def _is_run_manifest(path: Path) -> bool:
    try:
        with open(path) as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"id", "path", "status", "reason"} <= first.keys()


def _report_duplicates(clips: list[Clip], duplicates: list[list[str]]) -> None:
    """Say which recordings are listed twice; an official split that puts one recording on
    two sides cannot be changed here, so that is said too."""
    if not duplicates:
        return
    _say(f"{len(duplicates)} recording(s) listed under more than one id (e.g. {', '.join(duplicates[0])}): "
         f"each kept on one side of the split (meta.json: duplicates)")
    split_of = {c.id: c.split for c in clips}
    crossing = [ids for ids in duplicates if len({split_of[i] for i in ids}) > 1]
    if crossing:
        _say(f"warning: the official split puts {len(crossing)} of them in two splits "
             f"(e.g. {', '.join(f'{i} in {split_of[i]}' for i in crossing[0])})")


def _extract(clips: list[Clip], features: FeatureConfig, work: Path, progress: bool, engine: EngineConfig):
    """Decode and featurise every clip; returns (manifest rows, meta dict)."""
    stats = RunningStats(features.n_mels)
    manifest = []

    def take(results) -> None:  # in clip order: the statistics are summed as one process sums them
        for row, slices in results:
            manifest.append(row)
            if slices is not None:
                add_clip_stats(stats, slices)

    if engine.is_ray:
        take(_featurise_on_ray(clips, features, work, engine, progress))
    else:
        writers = {name: RaggedWriter(work, name, "float16", width=features.n_mels) for name in SPLITS}
        take(progress_bar(featurise(clips, LogMel(features), writers, threads=min(cpu_threads(), 8)),
                          total=len(clips), desc="features", unit="clip", enabled=progress))
        for writer in writers.values():
            writer.close()
    ok = [m for m in manifest if m["status"] == "ok"]
    if not any(m["split"] == "train" for m in ok):
        skipped = [m for m in manifest if m["split"] == "train"]  # no manifest is written: say why here
        why = f", e.g. {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
        raise TokenlmError(f"no usable clip in the train split: nothing to learn from "
                           f"({len(skipped)} train clip(s) skipped{why})")
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


def _featurise_on_ray(clips: list[Clip], features: FeatureConfig, work: Path, engine: EngineConfig, progress: bool):
    """``featurise``'s results for every clip, in order, from Ray workers that write a shard
    per block and split into ``work``; each split's index and shard list written at the end."""
    from tokenlm.engine.ray_map import map_blocks

    work_blocks = blocks(clips, _memo(lambda clip: audio_seconds(_source(clip))), engine.block_seconds)
    shards: dict[str, list] = {name: [] for name in SPLITS}
    for result in progress_bar(map_blocks(engine, FeatureBlocks, (features, work), work_blocks, progress=progress),
                               total=len(work_blocks), desc="features", unit="block", enabled=progress):
        yield from result["clips"]
        for name, shard in result["shards"].items():
            shards[name].append(shard)
    for name in SPLITS:
        write_shard_list(work, name, shards[name])


def featurise(clips: list[Clip], log_mel: LogMel, writers: dict[str, RaggedWriter], threads: int):
    """Featurise ``clips`` into their split's writer, yielding in clip order each clip's
    manifest row and, for a usable train clip, its normalisation sums (``ClipStats`` slices,
    for ``add_clip_stats``); None otherwise."""
    features = log_mel.config

    def frames_of(clip: Clip):
        # Shorter than one STFT window is unusable; shorter than a patch is padded later and
        # flagged. A long clip is left to the writing thread (``_stream_clip``).
        if seconds(clip) > STREAM_SECONDS:
            return _STREAMED, None
        try:
            return file_log_mel(_source(clip), log_mel, min_samples=features.n_fft), None
        except AudioError as err:
            return None, err.reason

    seconds = _memo(lambda clip: audio_seconds(_source(clip)))
    # Clips are featurised in parallel, one clip per thread: decoding, soxr and torch all
    # release the GIL. torch's own intra-op threads are turned off meanwhile: on a clip-sized
    # STFT they cost more than they give, and with every core busy their spin-waits made
    # log-mel 100x slower. The ordered, bounded map keeps the output deterministic and the
    # memory flat: at most `ahead` clips and AHEAD_SECONDS of audio in flight (one clip
    # always), however far decoding runs ahead and however long the recordings.
    with kernel_threads(1), ThreadPoolExecutor(max_workers=threads) as pool:
        results = bounded_map(pool, frames_of, clips, ahead=2 * threads, budget=AHEAD_SECONDS,
                              weight=lambda clip: seconds(clip) if seconds(clip) <= STREAM_SECONDS else 0.0)
        for clip, (result, error) in zip(clips, results):
            row = {"id": clip.id, "path": clip.path, **clip.span(), "label": clip.label, "split": clip.split,
                   "group": clip.group, "fold": clip.fold}
            writer = writers[clip.split]
            index_row = {"id": clip.id, "label": clip.label, "group": clip.group, "fold": clip.fold}
            clip_stats = RunningStats(features.n_mels).clip() if clip.split == "train" else None
            if result is _STREAMED:
                num_samples, error = _stream_clip(clip, log_mel, writer, index_row, clip_stats)
            elif error is None:
                frames, num_samples = result
                writer.add({**index_row, "padded": frames.shape[0] < features.patch_frames}, frames)
                if clip_stats is not None:
                    clip_stats.update(frames)  # bit for bit RunningStats.update(frames)
            if error is not None:
                yield {**row, "duration": None, "status": "skipped", "reason": error}, None
                continue
            yield ({**row, "duration": round(num_samples / features.sample_rate, 4), "status": "ok", "reason": None},
                   clip_stats.slices if clip_stats is not None else None)


def add_clip_stats(stats: RunningStats, slices: list) -> None:
    """Add one clip's normalisation sums (``featurise``) to ``stats``, as ``update`` would."""
    clip_stats = stats.clip()
    clip_stats.slices = list(slices)
    clip_stats.finish()


class FeatureBlocks:
    """A Ray worker of ``prepare``: one block of clips -> its shards in the stage's folder,
    and each clip's manifest row and normalisation sums for the driver."""

    def __init__(self, features: FeatureConfig, work: Path):
        self.log_mel, self.work = LogMel(features), Path(work)

    def __call__(self, number: int, clips: list[Clip]) -> dict:
        n_mels = self.log_mel.config.n_mels
        writers = {name: RaggedWriter(self.work, name, "float16", width=n_mels, shard=number) for name in SPLITS}
        results = list(featurise(clips, self.log_mel, writers, threads=1))
        return {"clips": results, "shards": close_shards(writers)}


_STREAMED = object()  # featurise's answer for a clip the writing thread streams


def _stream_clip(clip: Clip, log_mel: LogMel, writer: RaggedWriter, index_row: dict, clip_stats):
    """Featurise a long clip block by block straight into ``writer`` and ``clip_stats`` (a
    ``ClipStats``, or None): (samples, None), or (0, reason) with the writer left as it was."""
    num_samples = 0
    writer.begin(clip.id)
    try:
        for frames, samples in log_mel_blocks(_source(clip), log_mel, min_samples=log_mel.config.n_fft):
            writer.extend(frames)
            num_samples += samples
            if clip_stats is not None:
                clip_stats.update(frames)
    except AudioError as err:
        writer.discard()
        return 0, err.reason
    writer.end({**index_row, "padded": False})  # longer than any patch
    return num_samples, None


def _source(clip: Clip):
    """What to decode for a clip: its file, or its segment of a long recording."""
    return audio_source(clip.path, clip.start, clip.end)


def _memo(fn):
    """``fn`` of a clip, computed once per clip (a header read)."""
    cache = {}
    return lambda clip: cache[clip.id] if clip.id in cache else cache.setdefault(clip.id, fn(clip))


def _print_summary(manifest: list[dict]) -> None:
    ok = sum(1 for m in manifest if m["status"] == "ok")
    reasons = Counter(m["reason"].split(" (")[0] for m in manifest if m["status"] != "ok")
    line = f"{ok} clips ok, {len(manifest) - ok} skipped"
    if reasons:
        line += ": " + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    _say(line)


def check_strict(manifest_path: Path) -> None:
    """--strict: any clip the manifest lists as skipped is an error naming the manifest."""
    skipped = [m for m in read_jsonl(manifest_path) if m["status"] != "ok"]
    if skipped:
        first = skipped[0]
        raise TokenlmError(f"--strict: {len(skipped)} clip(s) skipped, e.g. {first['path']}: {first['reason']} "
                           f"(every clip's status: {manifest_path})")


def _say(text: str) -> None:
    click.echo(text, err=True)


def data_flags(section: dict, **flags) -> dict:
    """strict, hash_content and allow_outside: a flag given on the command line, else the
    recipe's data section, else off."""
    names = ("strict", "hash_content", "allow_outside")
    return {name: bool(flags[name] if flags.get(name) is not None else section.get(name, False))
            for name in names}


def run(ctx: RunContext) -> None:
    """``tokenlm run``: the pretraining corpus, then every task the recipe names."""
    engine = engine_config(ctx.section("engine"))
    with engine_session(engine):
        prepare_from_context(ctx, engine=engine)
        flags = data_flags(ctx.section("data"))
        split = ctx.config(SplitConfig, "split")
        for task in ctx.recipe_tasks():
            prepare_task(ctx.run, task, split, progress=ctx.progress, engine=engine, **flags)


def prepare_from_context(ctx: RunContext, data: str | None = None, engine: EngineConfig = LOCAL, **flags) -> Path:
    """prepare() of the pretraining corpus (the recipe's ``pretrain:`` section, else its
    ``data:`` section) under the command-line flags (None: not given)."""
    source, split = ctx.pretrain_data()
    data = data or source
    if not data:
        raise TokenlmError("need --data (or a recipe with data.path, or pretrain.path)")
    return prepare(data, ctx.run, ctx.config(FeatureConfig, "features"), build(SplitConfig, split, where="split"),
                   progress=ctx.progress, engine=engine, **data_flags(ctx.section("data"), **flags))


def prepare_task(run: RunDir, task: Task, split, *, progress: bool = True, **flags) -> Path:
    """The task's log-mel features, computed with the run's feature settings (so the frozen
    tokenizer reads what it was trained on); the task's own split. Returns the features folder."""
    if task.is_own:
        return run.features
    if not is_finished(run.features):
        raise ConfigError(f"{run.root} has no pretraining features yet: run `tokenlm prepare` first")
    features = read_feature_meta(run.features).config
    return prepare(task.path, task.data, features, split, progress=progress, **flags)
