"""Stages 2-3: train the patch autoencoder, fit a codebook per K, encode every clip
(the fitting itself: tokenlm.tokenizer.fit).

    RUN/tokenizer/            autoencoder (one per run; reused by every K)
    RUN/tokenizer/k{K}/       codebook.npy + metrics.json
    RUN/tokens/k{K}/          {split}.bin uint16 codes, {split}.index.jsonl, meta.json

Tokens are encoded from the audio files with the tokenizer's own log-mel, autoencoder and
codebook (``AudioTokenizer.encode_frames_batch``, what ``encode`` calls on new audio), so a
clip gets the same codes however it is encoded: bit for bit on the CPU up to one decoding block
(``audio.BLOCK_SECONDS``); longer files are decoded in blocks, equal within float tolerance.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
import torch

from tokenlm.core.config import build, to_dict
from tokenlm.core.errors import ArtifactError, TokenlmError
from tokenlm.core.fileio import fingerprint, read_json, write_json, write_jsonl
from tokenlm.core.runtime import pick_device, seed_everything
from tokenlm.data.files import check_unchanged, file_stamp
from tokenlm.data.layouts import scan_dataset
from tokenlm.data.splits import SplitConfig, assign_splits, link_duplicates
from tokenlm.engine import LOCAL, EngineConfig, engine_config, engine_session
from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
from tokenlm.pipeline.prepare import check_strict, publish_run_manifest
from tokenlm.pipeline.tasks import Task
from tokenlm.run import lock as runlock
from tokenlm.run.artifacts import Stage
from tokenlm.run.input_check import run_input_hashes
from tokenlm.run.rundir import (
    CODEBOOK,
    CONFIG,
    MANIFEST,
    METRICS,
    STAGE_FILE,
    STREAM_SPLIT,
    TRAINING,
    WHITENING,
    RunDir,
    as_run,
    is_finished,
    read_feature_meta,
    read_run_manifest,
)
from tokenlm.tokenizer.codebook import CodebookConfig, fit_codebook
from tokenlm.tokenizer.encoding import encode_clips
from tokenlm.tokenizer.fit import (
    RECON_PATCHES,
    PatchSampler,
    bottlenecks,
    codebook_metrics,
    fit_autoencoder,
    reconstruction_metrics,
)
from tokenlm.tokenizer.published import load_tokenizer
from tokenlm.tokenizer.quantizers import Quantizer, fit_quantizer, quantizer_kind
from tokenlm.tokenizer.tokenizer import (
    AudioTokenizer,
    AutoencoderTraining,
    PatchCoder,
    TokenizerConfig,
    load_patch_coder,
    save_patch_coder,
)

if TYPE_CHECKING:  # the context imports the tasks, which import this module
    from tokenlm.pipeline.registry import RunContext


def tokenize(run: str | Path, config: TokenizerConfig = TokenizerConfig(), codebook: CodebookConfig = CodebookConfig(),
             *, device: str | None = None, progress: bool = True, engine: EngineConfig = LOCAL) -> Path:
    """Train (or reuse) the run's autoencoder, fit (or reuse) the K-code codebook, encode every
    clip (on ``engine``). Needs RUN/features (``prepare``). Returns RUN/tokens/k{K}."""
    run = as_run(run)
    device = pick_device(device)
    train_autoencoder_stage(run, config.autoencoder, config.training, device=device, progress=progress)
    fit_codebook_stage(run, config.codebook_size, codebook, device=device, levels=config.levels,
                       groups=config.groups, whiten=config.whiten)
    out = encode_run_stage(run, config.codebook_size, device=device, progress=progress, engine=engine)
    run.set_codebook_size(config.codebook_size)
    return out


def train_autoencoder_stage(run: str | Path | RunDir, ae: AutoencoderConfig, training: AutoencoderTraining, *,
                            device: torch.device, progress: bool = True) -> Path:
    """RUN/tokenizer: autoencoder trained on the train split's patches, early-stopped on val."""
    run = as_run(run)
    training_key = {k: v for k, v in to_dict(training).items() if not (k == "max_patches" and v is None)}  # keys of older runs
    stage = Stage(run.tokenizer, config={"autoencoder": to_dict(ae), "training": training_key},
                  inputs={"features": run.features}, lock_root=run.lock_root)
    return stage.build("autoencoder", lambda work: _train_autoencoder(run, work, ae, training, device, progress))


def _train_autoencoder(run: RunDir, work: Path, ae: AutoencoderConfig, training: AutoencoderTraining,
                       device: torch.device, progress: bool) -> dict:
    feats = run.features
    meta = read_feature_meta(feats)
    features = meta.config
    seed_everything(training.seed)
    coder = PatchCoder(features, meta.norm_mean, meta.norm_std, PatchAutoencoder(features.patch_dim, ae)).to(device)
    train_patches = PatchSampler(feats, "train", features, coder, training.max_patches, training.seed)
    val_patches = PatchSampler(feats, "val", features, coder, training.max_val_patches, training.seed)
    if len(train_patches) == 0:
        raise TokenlmError("the train split has no clip as long as a patch: nothing to train the autoencoder on")
    history = fit_autoencoder(coder, train_patches, val_patches, training, device, progress, work / TRAINING)
    metrics = {**history, **reconstruction_metrics(coder, val_patches if len(val_patches) else train_patches,
                                                   training.max_val_patches, training.seed)}
    save_patch_coder(coder.cpu(), work, extra={"metrics": metrics})
    write_json(work / METRICS, metrics)
    shutil.rmtree(work / TRAINING)  # checkpoints and log were for resuming; the model is saved
    _say(f"autoencoder: val reconstruction {metrics['recon_rmse_db']:.2f} dB RMSE "
         f"({metrics['recon_relative_mse']:.3f} of the patch variance) -> {run.tokenizer}")
    return {"metrics": {k: v for k, v in metrics.items() if not isinstance(v, list)}}


def fit_codebook_stage(run: str | Path | RunDir, k: int, config: CodebookConfig, *, device: torch.device,
                       levels: int = 1, groups: int = 1, whiten: bool = False) -> Path:
    """RUN/tokenizer/k{K}: k-means on the train split's bottleneck vectors + code metrics;
    with ``levels`` or ``groups`` > 1, several codes per patch (tokenlm.tokenizer.quantizers)."""
    run = as_run(run)
    kind = quantizer_kind(levels, groups)
    # One code per patch keeps the key it always had (its finished stages stay valid).
    shape = {} if kind == "single" else {"quantizer": kind, "levels": max(levels, groups)}
    shape.update({"whiten": True} if whiten else {})
    stage = Stage(run.codebook(k), config={"k": k, "codebook": to_dict(config), **shape},
                  inputs={"autoencoder": run.tokenizer}, lock_root=run.lock_root)
    return stage.build(f"codebook K={k}", lambda work: _fit_codebook(run, work, k, config, device, kind,
                                                                   max(levels, groups), whiten))


def _fit_codebook(run: RunDir, work: Path, k: int, config: CodebookConfig, device: torch.device,
                  kind: str = "single", levels: int = 1, whiten: bool = False) -> dict:
    coder = load_patch_coder(run.tokenizer).to(device)
    feats = run.features
    # The k-means sample is drawn first and only its patches are read and encoded: the same
    # sample fit_codebook would draw from every train bottleneck (tokenlm.tokenizer.codebook), and the
    # code-usage metrics are counted on it.
    train = PatchSampler(feats, "train", coder.features, coder, k * config.points_per_centroid, config.seed)
    vectors = bottlenecks(coder, train)
    start = time.time()
    if kind == "single" and not whiten:  # the reference: k-means on the sample of the whole train split
        centroids, record = fit_codebook(vectors, k, config, population=train.population)
        quantizer = Quantizer(centroids, "single")
    else:
        quantizer, record = fit_quantizer(vectors, k, kind, levels, config, whitened=whiten)
    record["fit_seconds"] = round(time.time() - start, 3)
    np.save(work / CODEBOOK, quantizer.to_array())
    if quantizer.whitening is not None:
        np.save(work / WHITENING, quantizer.whitening)
    metrics = codebook_metrics(coder, quantizer, vectors, train, PatchSampler(feats, "val", coder.features, coder,
                                                                             RECON_PATCHES, 0))
    write_json(work / CONFIG, {**record, "bottleneck_variance": float(vectors.var(axis=0).sum())})
    write_json(work / METRICS, metrics)
    shape = "" if kind == "single" else f" x {levels} {'levels' if kind == 'residual' else 'groups'}"
    _say(f"codebook K={k}{shape}: {metrics['used_codes']} codes used, perplexity {metrics['perplexity']:.1f}, "
         f"relative quantisation error {metrics['relative_quantisation_error']:.3f}, "
         f"{metrics['nominal_bits_per_second']:.0f} bit/s -> {run.codebook(k)}")
    return {"metrics": {k_: v for k_, v in metrics.items() if not isinstance(v, (list, dict))}}


def encode_run_stage(run: str | Path | RunDir, k: int, *, tokenizer_run: RunDir | None = None,
                     device: torch.device, progress: bool = True, engine: EngineConfig = LOCAL) -> Path:
    """RUN/tokens/k{K}: every usable clip of the run's manifest, encoded with the tokenizer of
    ``tokenizer_run`` (default: the run's own; a task is encoded with its run's). Every clip
    that ``prepare`` accepted must still be there, unchanged, and decode: the tokens never hold
    fewer clips than the features."""
    run = as_run(run)
    models = tokenizer_run or run
    stage = Stage(run.tokens(k), config={"k": k},
                  inputs={"codebook": models.codebook(k), "features": run.features}, lock_root=run.lock_root)

    def make(work: Path) -> dict:
        tokenizer = AudioTokenizer.load(models.tokenizer, codebook_size=k, device=device)
        rows = [r for r in read_run_manifest(run) if r["status"] == "ok"]
        hashes = run_input_hashes(run)
        for row in rows:  # before hours of encoding, not after
            check_unchanged(row, hashes)
        hashes.save()
        meta = encode_clips(tokenizer, rows, work, progress=progress, engine=engine)
        if meta["skipped"]:
            first = meta["skipped"][0]
            raise ArtifactError(f"{len(meta['skipped'])} clip(s) that prepare accepted cannot be read now, e.g. "
                                f"{first['path']}: {first['reason']} (restore them, or rerun prepare)")
        _say(f"tokens: {sum(meta['tokens'].values())} codes at {tokenizer.code_rate:g}/s -> {stage.out_dir}")
        return {"tokens": meta["tokens"]}

    return stage.build(f"tokens K={k}", make)


def encode_new_data(tokenizer_path: Path, data: Path, out: Path, split: SplitConfig, *,
                    codebook_size: int | None = None, device=None, progress: bool = True,
                    strict: bool = False, hash_content: bool = False, allow_outside: bool = False,
                    engine: EngineConfig = LOCAL) -> Path:
    """Encode a new dataset with a trained tokenizer into OUT/tokens/k{K} (+ OUT/manifest.jsonl,
    one line per clip with its status and reason, copied from the stage's own manifest when the
    stage finishes, never before). Input files are stamped like ``prepare`` stamps them (with a
    hash of their bytes with ``hash_content``). With ``strict`` any skipped clip is an error,
    raised after the stage's manifest is written (the error names it) and before it finishes."""
    out = RunDir(out)
    if is_finished(out.features):  # its tokens and manifest would be overwritten
        raise TokenlmError(f"{out.root} is a training run: write the new data's codes to another RUN")
    tokenizer = load_tokenizer(tokenizer_path, codebook_size=codebook_size, device=pick_device(device))
    layout, clips = scan_dataset(data, allow_outside=allow_outside)
    files = {c.id: file_stamp(c.path, hash_content) for c in clips}
    clips, _ = link_duplicates(clips, {i: f["sha256"] for i, f in files.items() if f and "sha256" in f})
    stream = is_one_stream(clips)
    clips = [replace(c, split=STREAM_SPLIT) for c in clips] if stream else assign_splits(clips, split)
    rows = [{"id": c.id, "path": c.path, **c.span(), "label": c.label, "split": c.split, "group": c.group,
             "fold": c.fold, "file": files[c.id]} for c in clips]
    target = out.tokens(tokenizer.codebook_size)
    stage = Stage(target, config={"data": str(Path(data).resolve()),
                                  **({"stream": True} if stream else {"split": to_dict(split)})},
                  inputs={"tokenizer": tokenizer.info.get("tokenizer_hash") or str(Path(tokenizer_path).resolve()),
                          "data": fingerprint([(r["id"], r["path"], r["label"], r["split"], r["file"], *c.span().values())
                                              for r, c in zip(rows, clips)])},
                  lock_root=out.lock_root)

    def make(work: Path) -> dict:
        durations: dict = {}
        meta = encode_clips(tokenizer, rows, work, progress=progress, durations=durations, engine=engine)
        reasons = {s["id"]: s["reason"] for s in meta["skipped"]}
        write_jsonl(work / MANIFEST, [
            {**r, "duration": durations.get(r["id"]), "status": "skipped" if r["id"] in reasons else "ok",
             "reason": reasons.get(r["id"])} for r in rows])
        if strict:
            check_strict(work / MANIFEST)
        _say(f"{sum(meta['clips'].values())} clips encoded, {len(meta['skipped'])} skipped -> {target}")
        return {"tokens": meta["tokens"], "skipped": len(meta["skipped"])}

    with runlock.holding(stage.run_root):  # the copy in RUN is published under the lock, as the stage is
        stage.build(f"tokens K={tokenizer.codebook_size}", make)
        if strict:  # a stage finished earlier without --strict may hold skipped clips
            check_strict(target / MANIFEST)
        publish_run_manifest(target / MANIFEST, out.manifest)
    return target


def is_one_stream(clips) -> bool:
    """Unlabelled clips with no official split or fold (a folder of audio to encode): one
    stream, nothing held out; stored as the train split, exported as ``all`` (stages/export.py)."""
    return all(c.label is None and c.split is None and c.fold is None for c in clips)


def _say(text: str) -> None:
    click.echo(text, err=True)


def run(ctx: RunContext) -> None:
    """``tokenlm run``: the tokenizer trained on the pretraining corpus, then every task the
    recipe names encoded with it."""
    engine = engine_config(ctx.section("engine"))
    with engine_session(engine):
        tokenize_from_context(ctx, engine=engine)
        device = pick_device(ctx.device)
        for task in ctx.recipe_tasks():
            encode_task(ctx.run, task, ctx.run.codebook_size, device=device, progress=ctx.progress, engine=engine)


def tokenize_from_context(ctx: RunContext, overrides: dict | None = None, engine: EngineConfig = LOCAL) -> Path:
    config = tokenizer_config(ctx.section("tokenizer"), overrides or {}, current=_current_autoencoder(ctx.run))
    return tokenize(ctx.run, config, ctx.config(CodebookConfig, "codebook"), device=ctx.device, progress=ctx.progress,
                    engine=engine)


def _current_autoencoder(run: RunDir) -> dict | None:
    """The config of the run's trained autoencoder, if it has one."""
    path = run.tokenizer / STAGE_FILE
    return read_json(path).get("config") if path.is_file() else None


def tokenizer_config(section: dict | None, overrides: dict, current: dict | None = None) -> TokenizerConfig:
    """TokenizerConfig from the recipe's ``tokenizer:`` section (with nested ``autoencoder:``
    and ``training:``) and flat command-line overrides. ``current`` (the config a run's
    autoencoder was trained with) fills what neither gives, so ``tokenize RUN -K 512``
    reuses that autoencoder instead of retraining it with defaults (and dropping every codebook)."""
    current = current or {}
    section = dict(section or {})
    ae = build(AutoencoderConfig, current.get("autoencoder"), section.pop("autoencoder", None),
               {"bottleneck": overrides.get("bottleneck")}, where="tokenizer.autoencoder")
    training = build(AutoencoderTraining, current.get("training"), section.pop("training", None),
                     {"epochs": overrides.get("epochs")}, where="tokenizer.training")
    top = build(TokenizerConfig, section, {"codebook_size": overrides.get("codebook_size")}, where="tokenizer")
    return TokenizerConfig(codebook_size=top.codebook_size, autoencoder=ae, training=training, levels=top.levels,
                           groups=top.groups, whiten=top.whiten)


def encode_task(run: RunDir, task: Task, codebook_size: int, *, device, progress: bool = True,
                engine: EngineConfig = LOCAL) -> Path:
    """The task's codes with the run's tokenizer at K = ``codebook_size`` (the run's own
    codes for its own data), encoded on ``engine`` (default local). Returns the tokens folder."""
    if task.is_own:
        return run.tokens(codebook_size)
    return encode_run_stage(task.data, codebook_size, tokenizer_run=run, device=device, progress=progress,
                            engine=engine)
