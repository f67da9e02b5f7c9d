"""Stage 6: train the WaveNet decoder on (audio, codes); ``decode`` and ``generate`` use it.

    RUN/vocoder/config.json           WaveNetConfig + sample rate, hop, samples per code, K, tokenizer hash
    RUN/vocoder/wavenet.safetensors   the weights (best validation loss)
    RUN/vocoder/train_log.csv         step, lr, loss, val_loss, val_bits_per_sample, samples_per_s, elapsed_s
    RUN/vocoder/metrics.json          resynthesis quality on val excerpts (below)
    RUN/vocoder/samples/*.wav         those excerpts: original and resynthesis
    RUN/vocoder/samples/griffinlim/   the same excerpts through the Griffin-Lim reference
    RUN/vocoder/ckpt/                 last/best checkpoints while training (kept with --keep-checkpoints)

Training data: random code-aligned crops of the train split's audio and codes, held in memory
as mu-law classes (tokenlm.vocoder.training_data).

Quality (metrics.json), on ``metrics_clips`` val clips spread over the split, on their first
``metrics_seconds`` (whole codes), resynthesised in one batch with the incremental decoder:
the distances of tokenlm.evaluation.audio_quality (log-mel, LSD, multi-resolution STFT, STOI
when pystoi is installed), next to what the codes alone and 8-bit mu-law alone lose and to
the Griffin-Lim reference decoder (no training); samples/ holds all three to listen to.

Conditioning: the code embedding plus, with ``mel_conditioning`` (default), the codes'
decoded log-mel (WaveNetConfig.mel_bins; the table comes from the run's tokenizer). The recipe's
``lpc_order``/``lpc_gain`` make it model a linear predictor's excitation (tokenlm.vocoder.lpc) and
``logistic_components`` its output distribution (tokenlm.models.wavenet.distribution).

In ``tokenlm run`` the stage then hears the whole pipeline once (tokenlm.pipeline.generate).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import click
import numpy as np
import torch

from tokenlm.core.config import build, recipe_section, to_dict, unknown_option
from tokenlm.core.errors import ArtifactError, TokenlmError
from tokenlm.core.fileio import read_json, write_json
from tokenlm.data.store import RaggedSplit, bin_file
from tokenlm.evaluation.audio_quality import quality_metrics
from tokenlm.models.wavenet import WaveNet, WaveNetConfig
from tokenlm.pipeline.generate import pipeline_example
from tokenlm.pipeline.registry import RunContext
from tokenlm.run.artifacts import Stage, stage_key
from tokenlm.run.rundir import (
    CONFIG,
    METRICS,
    SAMPLES,
    SPLITS,
    RunDir,
    TokensMeta,
    as_run,
    read_tokens_meta,
    sample_files,
)
from tokenlm.tokenizer.tokenizer import AudioTokenizer
from tokenlm.training import TrainConfig, distributed_stage, train
from tokenlm.vocoder import lpc
from tokenlm.vocoder.training_data import (
    AlignedAudio,
    CropBatches,
    StreamedAudio,
    clip_rows,
    count_scored,
    load_aligned,
    spread,
    validation_crops,
    wavenet_loss,
)
from tokenlm.vocoder.vocoder import Vocoder, network_signal, save_vocoder, write_wav

# The vocoder's training defaults where they differ from TrainConfig's generic ones.
VOCODER_TRAINING_DEFAULTS = {"steps": 20000, "batch_size": 8, "lr": 1e-3, "warmup_steps": 200,
                             "weight_decay": 0.0, "eval_every": 500, "patience": 0, "log_every": 50}


GRIFFIN_LIM_SAMPLES = "griffinlim"  # samples/ subfolder of the reference decoder's excerpts


# WaveNetConfig fields that come from the tokenizer, never from the recipe.
DERIVED = ("codebook_size", "samples_per_code", "sample_rate", "mel_bins", "frames_per_code")


# The recipe's keys for the model: the rest of WaveNetConfig.
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(WaveNetConfig) if f.name not in DERIVED)


def _training_defaults() -> TrainConfig:
    return TrainConfig(**VOCODER_TRAINING_DEFAULTS)


@dataclass(frozen=True)
class VocoderConfig:
    """The ``vocoder:`` recipe section. The recipe keeps it flat (the WaveNet's sizes, the data
    and quality settings at the top, the loop under ``training:``); ``from_section`` sorts the
    sizes into ``model`` and ``to_section`` gives the flat form back.

    The defaults are the classic 2 x 10 layer WaveNet (dilations 1..512, 64 residual channels)
    meant for a GPU; recipes/demo.yaml shrinks it to finish in minutes on 2 CPU cores.
    """

    # The architecture. Its codebook_size, samples_per_code and sample_rate are the tokenizer's:
    # ``wavenet()`` fills them in.
    model: WaveNetConfig = field(default_factory=WaveNetConfig)
    # condition on the codes' decoded log-mel too (WaveNetConfig.mel_bins), not only on their embedding
    mel_conditioning: bool = True
    # data
    crop_codes: int = 8  # training window in codes (x samples_per_code samples), code-aligned
    # Train clips are decoded when a crop first needs them and kept in a cache of this many MB
    # per process (an hour of audio is 58 MB as mu-law): the same crops whatever its size;
    # 1024 holds ~17 h, a fraction of this 2-core, 23 GB machine shared by several jobs.
    cache_mb: float = 1024.0
    val_crops: int = 64  # fixed validation windows, one per val clip where there are enough
    # quality figures and samples
    metrics_clips: int = 4  # val clips resynthesised for metrics.json and samples/
    metrics_seconds: float = 1.0  # of each, from its start (rounded to whole codes)
    temperature: float = 1.0  # sampling temperature of those resyntheses
    # what the recipe says about this vocoder (e.g. "a pipeline check on CPU"): into metrics.json
    # and the report; not part of the stage key, so editing it retrains nothing
    note: str = ""
    training: TrainConfig = field(default_factory=_training_defaults)

    def __post_init__(self):
        for name in ("crop_codes", "val_crops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.metrics_clips < 0 or self.metrics_seconds <= 0:
            raise ValueError("need metrics_clips >= 0 and metrics_seconds > 0")

    def wavenet(self, codebook_size: int, samples_per_code: int, sample_rate: int, mel_bins: int = 0,
                frames_per_code: int = 1) -> WaveNetConfig:
        """The WaveNetConfig for a tokenizer with these codes (and log-mel frames of this size
        per code, used when ``mel_conditioning``)."""
        if not self.mel_conditioning:
            mel_bins, frames_per_code = 0, 1
        return dataclasses.replace(self.model, codebook_size=codebook_size, samples_per_code=samples_per_code,
                                   sample_rate=sample_rate, mel_bins=mel_bins, frames_per_code=frames_per_code)

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None
                     ) -> "VocoderConfig":
        """From a flat ``vocoder:`` section (``training:`` nested) under flat command-line
        overrides of any of the three kinds (None = not given). An unknown key is an error
        that lists the known ones."""
        values = {key.replace("-", "_"): value for key, value in (section or {}).items()}
        training = values.pop("training", None) or {}
        given = {key.replace("-", "_"): value for key, value in (overrides or {}).items() if value is not None}
        own = {f.name for f in dataclasses.fields(cls)} - {"model", "training"}
        known = {*MODEL_KEYS, *own, "training"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise unknown_option("vocoder", unknown[0], known)

        def only(mapping: dict, names) -> dict:
            return {key: value for key, value in mapping.items() if key in names}

        model = build(WaveNetConfig, only(values, MODEL_KEYS), only(given, MODEL_KEYS), where="vocoder")
        train_cfg = build(TrainConfig, VOCODER_TRAINING_DEFAULTS, training,
                          {key: value for key, value in given.items() if key not in known}, where="vocoder.training")
        top = build(cls, only(values, own), only(given, own), where="vocoder")
        return dataclasses.replace(top, model=model, training=train_cfg)

    def to_section(self) -> dict:
        """The flat ``vocoder:`` section of this config (what ``from_section`` reads)."""
        model = {key: value for key, value in to_dict(self.model).items() if key not in DERIVED}
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("model", "training")}
        return {**model, **own, "training": to_dict(self.training)}


def vocoder_config(recipe=None, overrides: Mapping[str, Any] | None = None) -> VocoderConfig:
    """VocoderConfig from a recipe file's ``vocoder:`` section under flat overrides."""
    return VocoderConfig.from_section(recipe_section(recipe, "vocoder"), overrides)


@dataclass(frozen=True)
class _Job:
    """What one training of the vocoder works from."""

    run: RunDir
    cfg: VocoderConfig
    training: TrainConfig  # cfg.training on the device asked for
    tokens: TokensMeta
    tokenizer_hash: str  # the stage key of the codebook that made the tokens
    progress: bool
    callbacks: tuple

    @property
    def wavenet(self) -> WaveNetConfig:
        features = read_json(self.run.tokenizer / CONFIG).get("features", {})
        step = features.get("patch_hop") or features.get("patch_frames", 1)  # frames a code covers
        return self.cfg.wavenet(self.tokens.codebook_size, self.tokens.samples_per_code, self.tokens.sample_rate,
                                mel_bins=features.get("n_mels", 0), frames_per_code=step)


def run(ctx: RunContext) -> None:
    """The vocoder step of ``tokenlm run``: train it, then hear the whole pipeline once."""
    train_vocoder(ctx.run, VocoderConfig.from_section(ctx.section("vocoder")), device=ctx.device,
                  progress=ctx.progress)
    pipeline_example(ctx.run, device=ctx.device, progress=ctx.progress)


def train_vocoder(run: str | Path | RunDir, cfg: VocoderConfig = VocoderConfig(), codebook_size: int | None = None,
                  device: str | None = None, progress: bool = True, *, out_dir: str | Path | None = None,
                  callbacks=()) -> Path:
    """Train the WaveNet of ``run`` on the train split's audio and the codes of codebook size
    ``codebook_size`` (default: the run's current K); write RUN/vocoder (or ``out_dir``).

    Resumes an interrupted run from its work folder's checkpoint; skips when up to date. Works
    alone or as one rank under torchrun. Returns the output folder.
    """
    run = as_run(run)
    training = cfg.training if device is None else dataclasses.replace(cfg.training, device=device)
    tokens = read_tokens_meta(run.tokens(codebook_size), codebook_size).require("sample_rate", "samples_per_code")
    tokens.require_single_level("the WaveNet vocoder")
    codebook = run.codebook(tokens.codebook_size)
    codebook_key = stage_key(codebook)
    made_by = tokens.raw.get("tokenizer_hash")
    if made_by and made_by != codebook_key:
        raise ArtifactError(f"{tokens.directory} was encoded with tokenizer {made_by}, but {codebook} is now "
                            f"{codebook_key}: rerun `tokenlm tokenize {run.root} -K {tokens.codebook_size}`")
    config = cfg.to_section()
    config["training"].pop("device")  # where it trains is not what it learns: switching resumes
    config.pop("note")  # words about the model, not the model
    config.pop("cache_mb")  # how the same crops are served, not what is learned
    stage = Stage(Path(out_dir) if out_dir else run.vocoder, config={**config, "codebook_size": tokens.codebook_size},
                  inputs={"tokens": tokens.directory, "codebook": codebook}, lock_root=run.lock_root)
    if stage.up_to_date("vocoder"):
        return stage.out_dir
    with distributed_stage(stage, training.device) as (work, dist):
        # Read again under the run's lock: the tokens may have been rebuilt while this waited.
        tokens = read_tokens_meta(tokens.directory, tokens.codebook_size).require("sample_rate", "samples_per_code")
        job = _Job(run, cfg, training, tokens, stage.inputs["codebook"], progress, tuple(callbacks))
        return _train_stage(job, stage, work, dist)


def _train_stage(job: _Job, stage: Stage, work: Path, dist) -> Path:
    cfg, training, wn_cfg = job.cfg, job.training, job.wavenet
    show = job.progress and dist.is_main
    splits = _token_splits(job.tokens)
    torch.manual_seed(training.seed)  # the initial weights
    model = WaveNet(wn_cfg)
    _fill_code_tables(job, model)
    train_audio = _train_audio(job, model, splits["train"])
    val = _val_batches(job, model, splits["val"], show)
    if dist.is_main:
        rf, sample_rate = wn_cfg.receptive_field, wn_cfg.sample_rate
        _say(f"vocoder: {_parameters(model) / 1e6:.2f} M parameters, {wn_cfg.cycles}x{wn_cfg.layers_per_cycle} "
             f"layers, receptive field {rf} samples ({rf / sample_rate * 1e3:.0f} ms), {len(train_audio.ids)} "
             f"train clips ({train_audio.n_samples / sample_rate / 60:.1f} min), crops of {cfg.crop_codes} codes "
             f"({cfg.crop_codes * wn_cfg.samples_per_code} samples), K={wn_cfg.codebook_size}, {dist.world_size} "
             f"process(es) on {dist.device}")
    result = train(
        model, training, work,
        loss_fn=wavenet_loss,
        train_batch=CropBatches(train_audio, cfg.crop_codes, wn_cfg.receptive_field),
        val_batches=(lambda: val) if val else None,
        val_metrics=lambda loss: {"val_bits_per_sample": loss / math.log(2)},
        count_items=count_scored,
        items_name="samples",
        dist=dist,
        progress=job.progress,
        callbacks=job.callbacks,
        desc="vocoder",
    )
    if dist.is_main:
        _save(job, stage, work, model, result, splits, train_audio, dist.world_size)
    dist.barrier()
    return stage.out_dir


def _fill_code_tables(job: _Job, model: WaveNet) -> None:
    """What the tokenizer says about each code, into the model: its decoded log-mel and linear predictor."""
    cfg = model.config
    if cfg.mel_conditioned:
        model.set_code_mel(code_mel_table(job.run, job.tokens.codebook_size, cfg.frames_per_code))
    if cfg.lpc_order:
        tokenizer = AudioTokenizer.load(job.run.tokenizer, codebook_size=job.tokens.codebook_size)
        model.code_lpc.copy_(torch.from_numpy(lpc.lpc_table(tokenizer, cfg.lpc_order, cfg.frames_per_code)))


def code_mel_table(run: RunDir, codebook_size: int, frames_per_code: int) -> torch.Tensor:
    """Every code's decoded log-mel patch, normalised as the autoencoder sees it: (K, frames_per_code
    * n_mels), the first ``frames_per_code`` frames of each patch (all of them without overlap)."""
    tokenizer = AudioTokenizer.load(run.tokenizer, codebook_size=codebook_size)
    with torch.inference_mode():
        patches = tokenizer.coder.autoencoder.decode(torch.from_numpy(tokenizer.centroids).to(tokenizer.device))
    n_mels = tokenizer.coder.features.n_mels
    return patches.float().cpu().reshape(codebook_size, -1, n_mels)[:, :frames_per_code].reshape(codebook_size, -1)


def _token_splits(tokens: TokensMeta) -> dict[str, RaggedSplit]:
    """Every split's codes, checked to lie in 0..K-1."""
    splits = {name: RaggedSplit(tokens.directory, name, "uint16") for name in SPLITS}
    for split in splits.values():
        if len(split.data) and int(split.data.max()) >= tokens.codebook_size:
            raise ArtifactError(f"{split.directory / bin_file(split.split)} holds code {int(split.data.max())} >= "
                                f"K={tokens.codebook_size}: the tokens are corrupt or from another tokenizer")
    return splits


def _train_audio(job: _Job, model: WaveNet, split: RaggedSplit) -> StreamedAudio:
    """The train clips long enough for a crop, their audio read as crops need it."""
    crop = job.cfg.crop_codes
    usable = np.flatnonzero(np.asarray(split.lengths) >= crop)
    if not len(usable):
        longest = int(split.lengths.max()) if len(split) else 0
        raise TokenlmError(f"no train clip has crop_codes={crop} codes (longest: {longest}): "
                           f"lower vocoder.crop_codes")
    wn_cfg = model.config
    return StreamedAudio(job.run, split, usable, wn_cfg.sample_rate, wn_cfg.samples_per_code, wn_cfg.n_classes,
                         job.cfg.cache_mb, signal=lambda wav, codes: network_signal(model, wav, codes))


def _val_batches(job: _Job, model: WaveNet, split: RaggedSplit, progress: bool) -> list | None:
    """Fixed windows of val clips (loaded alone, not the whole split); None without any."""
    cfg, batch_size = job.cfg, job.training.batch_size
    usable = np.flatnonzero(np.asarray(split.lengths) >= cfg.crop_codes).tolist()
    if not usable:
        return None
    audio = _aligned(job, model, split, [usable[i] for i in spread(len(usable), cfg.val_crops)], progress)
    batcher = CropBatches(audio, cfg.crop_codes, job.wavenet.receptive_field)
    crops = validation_crops(audio, cfg.val_crops, cfg.crop_codes, job.training.seed)
    return [batcher.batch(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)]


def _aligned(job: _Job, model: WaveNet, split: RaggedSplit, indices: list[int], progress: bool) -> AlignedAudio:
    wn_cfg = model.config
    return AlignedAudio.load(job.run, split, indices, wn_cfg.sample_rate, wn_cfg.samples_per_code,
                             wn_cfg.n_classes, progress, signal=lambda wav, codes: network_signal(model, wav, codes))


def _save(job: _Job, stage: Stage, work: Path, model: WaveNet, result, splits, train_audio: StreamedAudio,
          world_size: int) -> None:
    """The weights, config.json, metrics.json and samples into ``work``, then finish the stage."""
    wn_cfg, spc, sample_rate = job.wavenet, job.tokens.samples_per_code, job.tokens.sample_rate
    rf = wn_cfg.receptive_field
    info = {"sample_rate": sample_rate, "samples_per_code": spc, "hop_length": _hop_length(job.run),
            "code_rate": sample_rate / spc, "codebook_size": job.tokens.codebook_size,
            "tokenizer_hash": job.tokenizer_hash, "tokens_key": stage_key(job.tokens.directory),
            "mu_law_classes": wn_cfg.n_classes, "receptive_field": rf}
    vocoder = Vocoder(model.eval(), info, source=stage.out_dir)
    best = result.best_val_loss
    metrics = {"steps": result.step, "best_step": result.best_step, "val_loss": best,
               "val_bits_per_sample": (best / math.log(2)) if best else None,
               "parameters": _parameters(model), "receptive_field": rf,
               "train_clips": len(train_audio.ids), "train_seconds": train_audio.n_samples / sample_rate,
               "trained_samples": result.step * job.training.batch_size * job.cfg.crop_codes * spc * world_size}
    if job.cfg.note:
        metrics["note"] = job.cfg.note
    metrics.update(_measure(job, vocoder, splits, work))
    save_vocoder(model, work, info)
    write_json(work / METRICS, metrics)
    stage.finish(extra={"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
    if "vocoder_logmel_db" in metrics:
        def db(key: str) -> str:
            return f"{metrics[key]:.2f} dB" if isinstance(metrics.get(key), float) else "n/a"

        _say(f"vocoder: resynthesis log-mel distance {db('vocoder_logmel_db')}, LSD {db('vocoder_lsd_db')}, "
             f"MR-STFT {metrics['vocoder_mrstft']:.3f} (codes alone: {db('codebook_logmel_db')}, mu-law alone: "
             f"{db('mulaw_logmel_db')}, Griffin-Lim from the codes: {db('griffinlim_logmel_db')}) -> {stage.out_dir}")


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hop_length(run: RunDir) -> int | None:
    return read_json(run.tokenizer / CONFIG).get("features", {}).get("hop_length")


def _measure(job: _Job, vocoder: Vocoder, splits: dict[str, RaggedSplit], work: Path) -> dict:
    """metrics.json's quality figures and samples/*.wav on excerpts of held-out clips."""
    cfg = job.cfg
    if cfg.metrics_clips == 0:
        return {}
    split = next((splits[s] for s in ("val", "test", "train") if len(splits[s])), None)
    if split is None:
        return {}
    tokenizer = AudioTokenizer.load(job.run.tokenizer, codebook_size=job.tokens.codebook_size)
    vocoder.check_tokenizer(tokenizer)
    clips = _excerpts(job.run, split, vocoder, cfg)
    if not clips:
        return {}
    metrics, resynth, references = quality_metrics(vocoder, tokenizer, clips, cfg.temperature, job.training.seed,
                                                   progress=job.progress)
    metrics["resynthesis"]["split"] = split.split
    for i, ((clip_id, audio, _), out, reference) in enumerate(zip(clips, resynth, references)):
        original, resynthesis = sample_files(i, clip_id)
        write_wav(work / SAMPLES / original, audio, vocoder.sample_rate)
        write_wav(work / SAMPLES / resynthesis, out, vocoder.sample_rate)
        if reference is not None:  # the Griffin-Lim reference, to listen to beside it
            write_wav(work / SAMPLES / GRIFFIN_LIM_SAMPLES / resynthesis.replace("_resynth.wav", "_griffinlim.wav"),
                      reference, vocoder.sample_rate)
    return metrics


def _excerpts(run: RunDir, split: RaggedSplit, vocoder: Vocoder, cfg: VocoderConfig) -> list:
    """(id, audio, codes) of the first ``metrics_seconds`` (whole codes) of clips spread over
    ``split``; clips without a code are left out."""
    n_codes = max(1, round(cfg.metrics_seconds * vocoder.code_rate))
    spc = vocoder.samples_per_code
    manifest = clip_rows(run)
    clips = []
    for i in spread(len(split), cfg.metrics_clips):
        row, codes = split.rows[i], np.asarray(split[i], dtype=np.int64)
        if row["id"] not in manifest:
            raise ArtifactError(f"{run.manifest} does not list clip {row['id']} of the tokens")
        n = int(min(n_codes, len(codes)))
        audio = load_aligned(manifest[row["id"]], len(codes), vocoder.sample_rate, spc)
        clips.append((row["id"], audio[: n * spc], codes[:n]))
    return [clip for clip in clips if len(clip[2])]


def _say(message: str) -> None:
    click.echo(message, err=True)


DEFAULT = VocoderConfig()  # what the help shows
