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

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from tokenlm.artifacts import Stage, stage_key
from tokenlm.fileio import fingerprint, read_json, write_json, write_jsonl
from tokenlm.audio import audio_seconds
from tokenlm.codebook import CodebookConfig, fit_codebook
from tokenlm.config import build, to_dict
from tokenlm.datasets import SPLITS, scan_dataset
from tokenlm.splits import SplitConfig, assign_splits, link_duplicates
from tokenlm.errors import ArtifactError, AudioError, TokenlmError
from tokenlm.features import FeatureConfig, LogMel, file_log_mel, log_mel_blocks
from tokenlm.input_files import check_unchanged, file_stamp
from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
from tokenlm.pipeline import RunContext
from tokenlm.rundir import (
    CODEBOOK, CONFIG, MANIFEST, META, METRICS, STAGE_FILE, TRAINING, RunDir, as_run, is_finished, read_feature_meta,
    read_run_manifest,
)
from tokenlm.runtime import bounded_map, kernel_threads, pick_device, seed_everything
from tokenlm.stages.options import data_options
from tokenlm.stages.prepare import check_strict, data_flags, prepare
from tokenlm.store import RaggedWriter
from tokenlm.tokenizer import (
    AudioTokenizer, AutoencoderTraining, PatchCoder, TokenizerConfig, load_patch_coder, save_patch_coder,
)
from tokenlm.tokenizer_training import PatchSampler, bottlenecks, codebook_metrics, fit_autoencoder, reconstruction_metrics

# encode_clips' passes: seconds of audio decoded ahead and encoded at once (10 minutes of
# log-mel is 15 MB), and at most this many clips in one pass (short clips).
BATCH_SECONDS = 600.0
BATCH_CLIPS = 32
STREAM_PIECE_SECONDS = 60.0  # audio per encoder pass of a clip encoded block by block


def tokenize(run: str | Path, config: TokenizerConfig = TokenizerConfig(), codebook: CodebookConfig = CodebookConfig(),
             *, device: str | None = None, progress: bool = True) -> Path:
    """Train (or reuse) the run's autoencoder, fit (or reuse) the K-code codebook, encode every
    clip. Needs RUN/features (``prepare``). Returns RUN/tokens/k{K}."""
    run = as_run(run)
    device = pick_device(device)
    train_autoencoder_stage(run, config.autoencoder, config.training, device=device, progress=progress)
    fit_codebook_stage(run, config.codebook_size, codebook, device=device)
    out = encode_run_stage(run, config.codebook_size, device=device, progress=progress)
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

def fit_codebook_stage(run: str | Path | RunDir, k: int, config: CodebookConfig, *, device: torch.device) -> Path:
    """RUN/tokenizer/k{K}: k-means on the train split's bottleneck vectors + code metrics."""
    run = as_run(run)
    stage = Stage(run.codebook(k), config={"k": k, "codebook": to_dict(config)},
                  inputs={"autoencoder": stage_key(run.tokenizer)})
    return stage.build(f"codebook K={k}", lambda work: _fit_codebook(run, work, k, config, device))


def _fit_codebook(run: RunDir, work: Path, k: int, config: CodebookConfig, device: torch.device) -> dict:
    coder = load_patch_coder(run.tokenizer).to(device)
    feats = run.features
    train = PatchSampler(feats, "train", coder.features, coder)
    vectors = bottlenecks(coder, train)
    start = time.time()
    centroids, record = fit_codebook(vectors, k, config)
    record["fit_seconds"] = round(time.time() - start, 3)
    np.save(work / CODEBOOK, centroids)
    metrics = codebook_metrics(coder, centroids, vectors, train, PatchSampler(feats, "val", coder.features, coder))
    write_json(work / CONFIG, {**record, "bottleneck_variance": float(vectors.var(axis=0).sum())})
    write_json(work / METRICS, metrics)
    _say(f"codebook K={k}: {metrics['used_codes']} codes used, perplexity {metrics['perplexity']:.1f}, "
         f"{metrics['bits_per_second']:.0f} bit/s -> {run.codebook(k)}")
    return {"metrics": {k_: v for k_, v in metrics.items() if not isinstance(v, (list, dict))}}


# ---- encoding ---------------------------------------------------------------------------

def encode_run_stage(run: str | Path | RunDir, k: int, *, device: torch.device, progress: bool = True) -> Path:
    """RUN/tokens/k{K}: every usable clip of the run's manifest, encoded. Every clip that
    ``prepare`` accepted must still be there, unchanged, and decode: the tokens never hold
    fewer clips than the features."""
    run = as_run(run)
    stage = Stage(run.tokens(k), config={"k": k},
                  inputs={"codebook": stage_key(run.codebook(k)), "features": stage_key(run.features)})

    def make(work: Path) -> dict:
        tokenizer = AudioTokenizer.load(run.tokenizer, codebook_size=k, device=device)
        rows = [r for r in read_run_manifest(run) if r["status"] == "ok"]
        for row in rows:  # before hours of encoding, not after
            check_unchanged(row)
        meta = encode_clips(tokenizer, rows, work, progress=progress)
        if meta["skipped"]:
            first = meta["skipped"][0]
            raise ArtifactError(f"{len(meta['skipped'])} clip(s) that prepare accepted cannot be read now, e.g. "
                                f"{first['path']}: {first['reason']} (restore them, or rerun prepare)")
        _say(f"tokens: {sum(meta['tokens'].values())} codes at {tokenizer.code_rate:g}/s -> {stage.out_dir}")
        return {"tokens": meta["tokens"]}

    return stage.build(f"tokens K={k}", make)


def encode_clips(tokenizer: AudioTokenizer, rows: list[dict], out: Path, *, progress: bool = True,
                 batch_seconds: float = BATCH_SECONDS, durations: dict | None = None) -> dict:
    """Encode clips (manifest rows: id, path, label, split) into ``out``, streaming: memory grows
    neither with the corpus nor with a clip's length (files are decoded in blocks; about
    ``batch_seconds`` of audio is decoded ahead and encoded per pass, and a longer clip is
    encoded as its blocks come). Clips
    that fail to decode are listed in meta.json's ``skipped``. ``durations``, when given,
    receives each encoded clip's id -> seconds."""
    writers = {s: RaggedWriter(out, s, "uint16") for s in SPLITS}
    skipped = []
    bar = tqdm(total=len(rows), desc="encode", unit="clip", disable=not progress)
    features = tokenizer.coder.features
    log_mel = LogMel(features)  # on the CPU, in the decoding threads
    max_frames = max(int(batch_seconds * features.frame_rate), 4 * features.patch_frames)
    # Decoding (soundfile + soxr + log-mel) releases the GIL: two threads decode the next
    # batch while this one encodes the current one. The encoder's passes are bounded, so
    # torch's and FAISS's own thread pools are turned off meanwhile: competing with the
    # decoding threads (or anything else on the machine) their spin-waits made encoding
    # 10-15x slower.
    with kernel_threads(1, faiss=True), ThreadPoolExecutor(max_workers=2) as pool:
        # A clip longer than a batch is left to this thread, which encodes it block by block
        # into its writer (``_encode_streamed``): its frames are never held whole.
        seconds = {r["id"]: audio_seconds(r["path"]) for r in rows}
        streamed = {i for i, s in seconds.items() if s > batch_seconds}
        loaded = bounded_map(pool, lambda r: _STREAMED if r["id"] in streamed else _clip_frames(r["path"], log_mel),
                             rows, ahead=BATCH_CLIPS, budget=batch_seconds,
                             weight=lambda r: 0.0 if r["id"] in streamed else seconds[r["id"]])
        for batch in _batches(zip(rows, loaded), max_frames):
            if batch[0][1] is _STREAMED:
                row = batch[0][0]
                writer = writers[row.get("split") or "train"]
                num_samples, reason = _encode_streamed(tokenizer, row, log_mel, writer, max_frames)
                if reason is not None:
                    skipped.append({"id": row["id"], "path": row["path"], "reason": reason})
                elif durations is not None:
                    durations[row["id"]] = round(num_samples / tokenizer.sample_rate, 4)
                bar.update(1)
                continue
            good = [(row, clip) for row, clip in batch if isinstance(clip, ClipFrames)]
            skipped += [{"id": row["id"], "path": row["path"], "reason": reason}
                        for row, reason in batch if isinstance(reason, str)]
            for (row, clip), codes in zip(good, _encode(tokenizer, [c.frames for _, c in good], max_frames)):
                writers[row.get("split") or "train"].add({"id": row["id"], "label": row.get("label")}, codes)
                if durations is not None:
                    durations[row["id"]] = round(clip.num_samples / tokenizer.sample_rate, 4)
            bar.update(len(batch))
    bar.close()
    for w in writers.values():
        w.close()
    meta = {
        "codebook_size": tokenizer.codebook_size,
        "code_rate": tokenizer.code_rate,
        "sample_rate": tokenizer.sample_rate,
        "samples_per_code": tokenizer.samples_per_code,
        "patch_frames": tokenizer.patch_frames,
        "dtype": "uint16",
        "tokenizer_hash": tokenizer.info.get("tokenizer_hash"),
        "tokenizer_dir": tokenizer.info.get("tokenizer_dir"),
        "tokens": {s: w.offset for s, w in writers.items()},
        "clips": {s: len(w.rows) for s, w in writers.items()},
        "skipped": skipped,
    }
    write_json(out / META, meta)
    return meta


@dataclass(frozen=True)
class ClipFrames:
    """One clip's log-mel frames (frames, M) in dB and its length in samples."""

    frames: torch.Tensor
    num_samples: int


def _clip_frames(path: str, log_mel: LogMel):
    """ClipFrames, or the reason the file cannot be used."""
    try:
        frames, num_samples = file_log_mel(path, log_mel, min_samples=log_mel.config.n_fft)
    except AudioError as err:
        return err.reason
    return ClipFrames(torch.from_numpy(frames), num_samples)


_STREAMED = object()  # in place of a clip encoded block by block by the writing thread


def _encode_streamed(tokenizer: AudioTokenizer, row: dict, log_mel: LogMel, writer: RaggedWriter,
                     max_frames: int):
    """Encode a long clip as its log-mel blocks come, in the pieces ``_pieces`` would cut (so
    its codes are the whole clip's), writing each piece's codes: (samples, None), or (0,
    reason) with the writer left as it was."""
    features = tokenizer.coder.features
    step, size = features.patch_step, features.patch_frames
    # Pieces of a few decoding blocks: a batch's worth (10 minutes) per pass let the peak grow
    # with the number of passes (0.40 GB for a 2-hour file, 0.36 GB for 15 minutes).
    max_frames = min(max_frames, int(STREAM_PIECE_SECONDS * features.frame_rate))
    advance = max(1, (max_frames - size) // step + 1) * step
    piece = advance - step + size
    pending, num_samples, seen = np.zeros((0, features.n_mels), np.float32), 0, 0
    skip = 0  # frames between two pieces not yet arrived (patches further apart than long)
    writer.begin(row["id"])
    try:
        for frames, samples in log_mel_blocks(row["path"], log_mel, min_samples=features.n_fft):
            num_samples, seen = num_samples + samples, seen + len(frames)
            dropped = min(skip, len(frames))
            pending, skip = np.concatenate([pending, frames[dropped:]]), skip - dropped
            while len(pending) >= piece:
                writer.extend(tokenizer.encode_frames(torch.from_numpy(pending[:piece])).numpy())
                pending, skip = pending[advance:], max(0, advance - len(pending))
        if len(pending) >= size or seen < size:  # the last patches; a clip under a patch is padded
            writer.extend(tokenizer.encode_frames(torch.from_numpy(pending)).numpy())
    except AudioError as err:
        writer.discard()
        return 0, err.reason
    writer.end({"id": row["id"], "label": row.get("label")})
    return num_samples, None


def _batches(pairs, max_frames: int):
    """Consecutive (row, ClipFrames or reason) pairs, grouped until their frames reach
    ``max_frames`` or BATCH_CLIPS clips: seconds of audio set a batch's size, not clip count."""
    batch, frames = [], 0
    for row, clip in pairs:
        if clip is _STREAMED:  # a batch of its own, in its place
            if batch:
                yield batch
            yield [(row, clip)]
            batch, frames = [], 0
            continue
        batch.append((row, clip))
        frames += len(clip.frames) if isinstance(clip, ClipFrames) else 0
        if frames >= max_frames or len(batch) >= BATCH_CLIPS:
            yield batch
            batch, frames = [], 0
    if batch:
        yield batch


def _encode(tokenizer: AudioTokenizer, clips: list[torch.Tensor], max_frames: int) -> list[np.ndarray]:
    """Each clip's codes from its frames, at most about ``max_frames`` frames per autoencoder
    and FAISS pass. A long clip is cut on patch boundaries (``_pieces``), so its codes are
    those of the whole clip."""
    pieces = [(i, piece) for i, frames in enumerate(clips) for piece in _pieces(frames, tokenizer, max_frames)]
    codes = [[] for _ in clips]
    start = 0
    while start < len(pieces):
        end, total = start + 1, len(pieces[start][1])
        while end < len(pieces) and total + len(pieces[end][1]) <= max_frames:
            total += len(pieces[end][1])
            end += 1
        passed = pieces[start:end]
        for (i, _), piece_codes in zip(passed, tokenizer.encode_frames_batch([p for _, p in passed])):
            codes[i].append(piece_codes.numpy())
        start = end
    return [np.concatenate(c) for c in codes]


def _pieces(frames: torch.Tensor, tokenizer: AudioTokenizer, max_frames: int) -> list[torch.Tensor]:
    """``frames`` (frames, M) in pieces of at most ``max_frames`` whose patches, together, are
    exactly the whole clip's: pieces start on patch starts and overlap as patches do."""
    features = tokenizer.coder.features
    step, size = features.patch_step, features.patch_frames
    if len(frames) <= max_frames:
        return [frames]  # the encoder pads a clip shorter than a patch, so keep such clips whole
    advance = max(1, (max_frames - size) // step + 1) * step  # frames between piece starts
    return [frames[s:s + advance - step + size] for s in range(0, len(frames) - size + 1, advance)]


def encode_new_data(tokenizer_path: Path, data: Path, out: Path, split: SplitConfig, *,
                    codebook_size: int | None = None, device=None, progress: bool = True,
                    strict: bool = False, hash_content: bool = False, allow_outside: bool = False) -> Path:
    """Encode a new dataset with a trained tokenizer into OUT/tokens/k{K} (+ OUT/manifest.jsonl,
    one line per clip with its status and reason, copied from the stage's own manifest when the
    stage finishes, never before). Input files are stamped like ``prepare`` stamps them (with a
    hash of their bytes with ``hash_content``). With ``strict`` any skipped clip is an error,
    raised after the stage's manifest is written (the error names it) and before it finishes."""
    out = RunDir(out)
    if is_finished(out.features):  # its tokens and manifest would be overwritten
        raise TokenlmError(f"{out.root} is a training run: write the new data's codes to another --out")
    tokenizer = AudioTokenizer.load(tokenizer_path, codebook_size=codebook_size, device=pick_device(device))
    layout, clips = scan_dataset(data, allow_outside=allow_outside)
    files = {c.id: file_stamp(c.path, hash_content) for c in clips}
    clips, _ = link_duplicates(clips, {i: f["sha256"] for i, f in files.items() if f and "sha256" in f})
    clips = assign_splits(clips, split)
    rows = [{"id": c.id, "path": c.path, "label": c.label, "split": c.split, "group": c.group, "fold": c.fold,
             "file": files[c.id]} for c in clips]
    target = out.tokens(tokenizer.codebook_size)
    stage = Stage(target, config={"data": str(data), "split": to_dict(split)},
                  inputs={"tokenizer": tokenizer.info.get("tokenizer_hash") or str(tokenizer_path),
                          "data": fingerprint([(r["id"], r["path"], r["label"], r["split"], r["file"]) for r in rows])})

    def make(work: Path) -> dict:
        durations: dict = {}
        meta = encode_clips(tokenizer, rows, work, progress=progress, durations=durations)
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
    _publish(target / MANIFEST, out.manifest)
    return target


def _publish(source: Path, dest: Path) -> None:
    """``dest`` := a copy of the finished stage's ``source``, unless it already is (atomic: a
    reader sees the old copy or the new one)."""
    if dest.is_file() and dest.read_bytes() == source.read_bytes():
        return
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def _say(text: str) -> None:
    click.echo(text, err=True)


# ---- command ----------------------------------------------------------------------------

@click.command("tokenize")
@click.option("--data", type=click.Path(), help="Dataset folder or manifest file.")
@click.option("--out", "out", type=click.Path(), help="Run directory (or, with --tokenizer, where to write codes).")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(), help="Encode --data with this trained tokenizer instead of training one.")
@click.option("-K", "--codebook-size", type=int, help="Number of codes (default 256).")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (sections: data, features, split, tokenizer, codebook).")
@click.option("--epochs", type=int, help="Autoencoder epochs (upper bound; early stopping on val).")
@click.option("--bottleneck", type=int, help="Autoencoder bottleneck width.")
@click.option("--device", help="cpu, cuda or auto (default).")
@click.option("--strict", is_flag=True, default=None, help="Fail if any clip is skipped.")
@data_options()
def command(data, out, tokenizer_path, codebook_size, recipe, epochs, bottleneck, device, strict, hash_content,
            allow_outside):
    """Train the autoencoder and codebook on the train split, then encode every clip.

    \b
    tokenlm tokenize --data data/demo --out runs/demo -K 256
    tokenlm tokenize --out runs/demo -K 512        # reuse the autoencoder, new codebook
    tokenlm tokenize --tokenizer runs/demo/tokenizer --data NEWDIR --out OUT
    """
    ctx = RunContext.create(out, recipe, device=device)
    data = data or ctx.section("data").get("path")
    split = ctx.config(SplitConfig, "split")
    if tokenizer_path:
        if not data:
            raise TokenlmError("--tokenizer needs --data: the audio to encode")
        flags = data_flags(ctx.section("data"), strict=strict, hash_content=hash_content, allow_outside=allow_outside)
        encode_new_data(Path(tokenizer_path), Path(data), ctx.run.root, split, codebook_size=codebook_size,
                        device=device, **flags)
        return
    if data:
        flags = data_flags(ctx.section("data"), strict=strict, hash_content=hash_content, allow_outside=allow_outside)
        prepare(data, ctx.run, ctx.config(FeatureConfig, "features"), split, **flags)
    elif not is_finished(ctx.run.features):
        raise TokenlmError(f"{ctx.run.root} has no features yet: pass --data DIR")
    tokens = _tokenize(ctx, {"codebook_size": codebook_size, "epochs": epochs, "bottleneck": bottleneck})
    click.echo(f"tokenizer: {ctx.run.tokenizer}\ntokens:    {tokens}")


def run(ctx: RunContext) -> None:
    _tokenize(ctx)


def _tokenize(ctx: RunContext, overrides: dict | None = None) -> Path:
    config = tokenizer_config(ctx.section("tokenizer"), overrides or {}, current=_current_autoencoder(ctx.run))
    return tokenize(ctx.run, config, ctx.config(CodebookConfig, "codebook"), device=ctx.device, progress=ctx.progress)


def _current_autoencoder(run: RunDir) -> dict | None:
    """The config of the run's trained autoencoder, if it has one."""
    path = run.tokenizer / STAGE_FILE
    return read_json(path).get("config") if path.is_file() else None


def tokenizer_config(section: dict | None, overrides: dict, current: dict | None = None) -> TokenizerConfig:
    """TokenizerConfig from the recipe's ``tokenizer:`` section (with nested ``autoencoder:``
    and ``training:``) and flat command-line overrides. ``current`` (the config a run's
    autoencoder was trained with) fills what neither gives, so ``tokenize --out RUN -K 512``
    reuses that autoencoder instead of retraining it with defaults (and dropping every codebook)."""
    current = current or {}
    section = dict(section or {})
    ae = build(AutoencoderConfig, current.get("autoencoder"), section.pop("autoencoder", None),
               {"bottleneck": overrides.get("bottleneck")}, where="tokenizer.autoencoder")
    training = build(AutoencoderTraining, current.get("training"), section.pop("training", None),
                     {"epochs": overrides.get("epochs")}, where="tokenizer.training")
    top = build(TokenizerConfig, section, {"codebook_size": overrides.get("codebook_size")}, where="tokenizer")
    return TokenizerConfig(codebook_size=top.codebook_size, autoencoder=ae, training=training)
