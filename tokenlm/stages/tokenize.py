"""Stages 2-3: train the patch autoencoder, fit a codebook per K, encode every clip
(the fitting itself: tokenlm.tokenizer_training).

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
from pathlib import Path

import click
import numpy as np
import torch

from tokenlm.artifacts import Stage, stage_key
from tokenlm.codebook import CodebookConfig
from tokenlm.config import build, to_dict
from tokenlm.datasets import scan_dataset
from tokenlm.encoding import encode_clips
from tokenlm.engine import LOCAL, EngineConfig, engine_config, engine_session
from tokenlm.errors import ArtifactError, TokenlmError
from tokenlm.features import FeatureConfig
from tokenlm.fileio import fingerprint, publish_copy, read_json, write_json, write_jsonl
from tokenlm.input_files import check_unchanged, file_stamp
from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
from tokenlm.pipeline import RunContext
from tokenlm.quantizers import fit_quantizer, quantizer_kind
from tokenlm.rundir import (
    CODEBOOK, CONFIG, MANIFEST, METRICS, STAGE_FILE, TRAINING, WHITENING, RunDir, as_run, is_finished, read_feature_meta,
    read_run_manifest,
)
from tokenlm.runtime import pick_device, seed_everything
from tokenlm.splits import SplitConfig, assign_splits, link_duplicates
from tokenlm.stages.options import data_options, engine_options, run_argument
from tokenlm.stages.prepare import check_strict, data_flags, prepare
from tokenlm.tasks import encode_task
from tokenlm.tokenizer import (
    AudioTokenizer, AutoencoderTraining, PatchCoder, TokenizerConfig, load_patch_coder, save_patch_coder,
)
from tokenlm.tokenizer_training import PatchSampler, bottlenecks, codebook_metrics, fit_autoencoder, reconstruction_metrics


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


# ---- autoencoder ------------------------------------------------------------------------

def train_autoencoder_stage(run: str | Path | RunDir, ae: AutoencoderConfig, training: AutoencoderTraining, *,
                            device: torch.device, progress: bool = True) -> Path:
    """RUN/tokenizer: autoencoder trained on the train split's patches, early-stopped on val."""
    run = as_run(run)
    stage = Stage(run.tokenizer, config={"autoencoder": to_dict(ae), "training": to_dict(training)},
                  inputs={"features": stage_key(run.features)})
    return stage.build("autoencoder", lambda work: _train_autoencoder(run, work, ae, training, device, progress))


def _train_autoencoder(run: RunDir, work: Path, ae: AutoencoderConfig, training: AutoencoderTraining,
                       device: torch.device, progress: bool) -> dict:
    feats = run.features
    meta = read_feature_meta(feats)
    features = meta.config
    seed_everything(training.seed)
    coder = PatchCoder(features, meta.norm_mean, meta.norm_std, PatchAutoencoder(features.patch_dim, ae)).to(device)
    train_patches = PatchSampler(feats, "train", features, coder)
    val_patches = PatchSampler(feats, "val", features, coder)
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


# ---- codebook ---------------------------------------------------------------------------

def fit_codebook_stage(run: str | Path | RunDir, k: int, config: CodebookConfig, *, device: torch.device,
                       levels: int = 1, groups: int = 1, whiten: bool = False) -> Path:
    """RUN/tokenizer/k{K}: k-means on the train split's bottleneck vectors + code metrics;
    with ``levels`` or ``groups`` > 1, several codes per patch (tokenlm.quantizers)."""
    run = as_run(run)
    kind = quantizer_kind(levels, groups)
    # One code per patch keeps the key it always had (its finished stages stay valid).
    shape = {} if kind == "single" else {"quantizer": kind, "levels": max(levels, groups)}
    shape.update({"whiten": True} if whiten else {})
    stage = Stage(run.codebook(k), config={"k": k, "codebook": to_dict(config), **shape},
                  inputs={"autoencoder": stage_key(run.tokenizer)})
    return stage.build(f"codebook K={k}", lambda work: _fit_codebook(run, work, k, config, device, kind,
                                                                   max(levels, groups), whiten))


def _fit_codebook(run: RunDir, work: Path, k: int, config: CodebookConfig, device: torch.device,
                  kind: str = "single", levels: int = 1, whiten: bool = False) -> dict:
    coder = load_patch_coder(run.tokenizer).to(device)
    feats = run.features
    train = PatchSampler(feats, "train", coder.features, coder)
    vectors = bottlenecks(coder, train)
    start = time.time()
    quantizer, record = fit_quantizer(vectors, k, kind, levels, config, whitened=whiten)
    record["fit_seconds"] = round(time.time() - start, 3)
    np.save(work / CODEBOOK, quantizer.to_array())
    if quantizer.whitening is not None:
        np.save(work / WHITENING, quantizer.whitening)
    metrics = codebook_metrics(coder, quantizer, vectors, train, PatchSampler(feats, "val", coder.features, coder))
    write_json(work / CONFIG, {**record, "bottleneck_variance": float(vectors.var(axis=0).sum())})
    write_json(work / METRICS, metrics)
    shape = "" if kind == "single" else f" x {levels} {'levels' if kind == 'residual' else 'groups'}"
    _say(f"codebook K={k}{shape}: {metrics['used_codes']} codes used, perplexity {metrics['perplexity']:.1f}, "
         f"relative quantisation error {metrics['relative_quantisation_error']:.3f}, "
         f"{metrics['nominal_bits_per_second']:.0f} bit/s -> {run.codebook(k)}")
    return {"metrics": {k_: v for k_, v in metrics.items() if not isinstance(v, (list, dict))}}


# ---- encoding ---------------------------------------------------------------------------

def encode_run_stage(run: str | Path | RunDir, k: int, *, tokenizer_run: RunDir | None = None,
                     device: torch.device, progress: bool = True, engine: EngineConfig = LOCAL) -> Path:
    """RUN/tokens/k{K}: every usable clip of the run's manifest, encoded with the tokenizer of
    ``tokenizer_run`` (default: the run's own; a task is encoded with its run's). Every clip
    that ``prepare`` accepted must still be there, unchanged, and decode: the tokens never hold
    fewer clips than the features."""
    run = as_run(run)
    models = tokenizer_run or run
    stage = Stage(run.tokens(k), config={"k": k},
                  inputs={"codebook": stage_key(models.codebook(k)), "features": stage_key(run.features)})

    def make(work: Path) -> dict:
        tokenizer = AudioTokenizer.load(models.tokenizer, codebook_size=k, device=device)
        rows = [r for r in read_run_manifest(run) if r["status"] == "ok"]
        for row in rows:  # before hours of encoding, not after
            check_unchanged(row)
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
    tokenizer = AudioTokenizer.load(tokenizer_path, codebook_size=codebook_size, device=pick_device(device))
    layout, clips = scan_dataset(data, allow_outside=allow_outside)
    files = {c.id: file_stamp(c.path, hash_content) for c in clips}
    clips, _ = link_duplicates(clips, {i: f["sha256"] for i, f in files.items() if f and "sha256" in f})
    clips = assign_splits(clips, split)
    rows = [{"id": c.id, "path": c.path, **c.span(), "label": c.label, "split": c.split, "group": c.group,
             "fold": c.fold, "file": files[c.id]} for c in clips]
    target = out.tokens(tokenizer.codebook_size)
    stage = Stage(target, config={"data": str(Path(data).resolve()), "split": to_dict(split)},
                  inputs={"tokenizer": tokenizer.info.get("tokenizer_hash") or str(Path(tokenizer_path).resolve()),
                          "data": fingerprint([(r["id"], r["path"], r["label"], r["split"], r["file"], *c.span().values())
                                              for r, c in zip(rows, clips)])})

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

    stage.build(f"tokens K={tokenizer.codebook_size}", make)
    if strict:  # a stage finished earlier without --strict may hold skipped clips
        check_strict(target / MANIFEST)
    publish_copy(target / MANIFEST, out.manifest)
    return target


def _say(text: str) -> None:
    click.echo(text, err=True)


# ---- command ----------------------------------------------------------------------------

@click.command("tokenize")
@run_argument
@click.option("--data", type=click.Path(), help="Dataset folder or manifest file. [the recipe's data.path]")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(), help="Encode --data with this trained tokenizer instead of training one.")
@click.option("-K", "--codebook-size", type=int, help="Number of codes. [256]")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (sections: data, features, split, tokenizer, codebook).")
@click.option("--epochs", type=int, help="Autoencoder epochs (upper bound; early stopping on val). [30]")
@click.option("--bottleneck", type=int, help="Autoencoder bottleneck width. [64]")
@click.option("--device", help="cpu, cuda or auto. [auto]")
@click.option("--strict", is_flag=True, default=None, help="Fail if any clip is skipped. [off]")
@data_options()
@engine_options()
def command(run, data, tokenizer_path, codebook_size, recipe, epochs, bottleneck, device, strict, hash_content,
            allow_outside, engine, ray_address, ray_workers):
    """Train the autoencoder and codebook on the train split, then encode every clip into
    RUN (with --tokenizer: encode --data with that tokenizer into RUN).

    \b
    tokenlm tokenize runs/demo --data data/demo -K 256
    tokenlm tokenize runs/demo -K 512        # reuse the autoencoder, new codebook
    tokenlm tokenize OUT --tokenizer runs/demo/tokenizer --data NEWDIR
    """
    ctx = RunContext.create(run, recipe, device=device)
    engine = engine_config(ctx.section("engine"), engine, ray_address, ray_workers)
    data = data or ctx.section("data").get("path")
    split = ctx.config(SplitConfig, "split")
    if tokenizer_path:
        if not data:
            raise TokenlmError("--tokenizer needs --data: the audio to encode")
        flags = data_flags(ctx.section("data"), strict=strict, hash_content=hash_content, allow_outside=allow_outside)
        encode_new_data(Path(tokenizer_path), Path(data), ctx.run.root, split, codebook_size=codebook_size,
                        device=device, engine=engine, **flags)
        return
    if not data and not is_finished(ctx.run.features):
        raise TokenlmError(f"{ctx.run.root} has no features yet: pass --data DIR")
    with engine_session(engine):  # one Ray session for the features and the codes
        if data:
            flags = data_flags(ctx.section("data"), strict=strict, hash_content=hash_content,
                               allow_outside=allow_outside)
            prepare(data, ctx.run, ctx.config(FeatureConfig, "features"), split, engine=engine, **flags)
        tokens = _tokenize(ctx, {"codebook_size": codebook_size, "epochs": epochs, "bottleneck": bottleneck}, engine)
    click.echo(f"tokenizer: {ctx.run.tokenizer}\ntokens:    {tokens}")


def run(ctx: RunContext) -> None:
    """``tokenlm run``: the tokenizer trained on the pretraining corpus, then every task the
    recipe names encoded with it."""
    engine = engine_config(ctx.section("engine"))
    with engine_session(engine):
        _tokenize(ctx, engine=engine)
        device = pick_device(ctx.device)
        for task in ctx.recipe_tasks():
            encode_task(ctx.run, task, ctx.run.codebook_size, device=device, progress=ctx.progress, engine=engine)


def _tokenize(ctx: RunContext, overrides: dict | None = None, engine: EngineConfig = LOCAL) -> Path:
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
