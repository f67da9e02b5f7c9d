"""Stage 6: train the WaveNet decoder on (audio, codes); ``decode`` and ``generate`` use it.

    RUN/vocoder/config.json           WaveNetConfig + sample rate, hop, samples per code, K, tokenizer hash
    RUN/vocoder/wavenet.safetensors   the weights (best validation loss)
    RUN/vocoder/train_log.csv         step, lr, loss, val_loss, val_bits_per_sample, samples_per_s, elapsed_s
    RUN/vocoder/metrics.json          resynthesis quality on val excerpts (below)
    RUN/vocoder/samples/*.wav         those excerpts: original and resynthesis
    RUN/vocoder/ckpt/                 last.pt (resume state), best.pt

Training data: the train split's audio, read once with ``load_audio`` at the tokenizer's
sample rate and held in memory as 8-bit mu-law classes (one byte a sample: the demo's 480
two-second clips are 15 MB, an hour of audio 58 MB), laid out like the token file so that
code ``i`` of the split covers samples ``i * samples_per_code ...``. Each clip's audio is cut
or zero-padded to exactly ``codes x samples_per_code`` samples (a centred STFT gives a clip up
to one hop more codes than whole codes fit in it). A training window is a random
code-aligned crop of ``crop_codes`` codes and their audio, drawn uniformly over every
(clip, start) pair; only a generator seeded by (seed, rank, step) decides it (tokenlm.training).
A crop that starts inside a clip leaves its first ``receptive_field`` samples unscored: their
true past lies before the crop and the model would only see silence there.

Quality (metrics.json), on ``metrics_clips`` val clips spread over the split, on their first
``metrics_seconds`` (whole codes), resynthesised in one batch with the incremental decoder:

- ``vocoder_logmel_db``: RMSE in dB between the log-mel (the run's FeatureConfig) of the
  input and of its resynthesis, and ``vocoder_lsd_db``, the log-spectral distance
  ``mean_frames sqrt(mean_freq (10 log10 P - 10 log10 P')^2)`` on STFT power spectra;
- ``codebook_logmel_db``: the same log-mel distance for the tokenizer's own reconstruction
  (``AudioTokenizer.decode(codes)``) -- what the codes lose before any vocoder;
- ``mulaw_logmel_db`` / ``mulaw_lsd_db``: the input through 8-bit mu-law alone, the floor a
  perfect 256-class vocoder would reach.

Resynthesis samples the WaveNet, so it is not the input even for a perfect model: the codes
fix the log-mel patch, not the waveform. The figures compare spectra for that reason.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tokenlm.artifacts import (
    Stage, codebook_dir, read_json, read_jsonl, read_stage, stage_key, tokenizer_dir, tokens_dir, write_json,
)
from tokenlm.audio import load_audio
from tokenlm.config import build, recipe_section, to_dict
from tokenlm.errors import ArtifactError, AudioError, ConfigError, TokenlmError
from tokenlm.models.wavenet import WaveNet, WaveNetConfig, mu_law_decode, mu_law_encode
from tokenlm.store import RaggedSplit
from tokenlm.training import TrainConfig, distributed_stage, train
from tokenlm.vocoder import Vocoder, save_vocoder

VOCODER_DIR = "vocoder"
SAMPLES_DIR = "samples"
IGNORE = -100  # target of samples that are not scored

# The vocoder's training defaults where they differ from TrainConfig's generic ones.
VOCODER_TRAINING_DEFAULTS = {"steps": 20000, "batch_size": 8, "lr": 1e-3, "warmup_steps": 200,
                             "weight_decay": 0.0, "eval_every": 500, "patience": 0, "log_every": 50}
# WaveNetConfig fields that come from the tokenizer, never from the recipe.
DERIVED = ("vocab_size", "samples_per_code", "sample_rate")


def _training_defaults() -> TrainConfig:
    return TrainConfig(**VOCODER_TRAINING_DEFAULTS)


@dataclass(frozen=True)
class VocoderConfig:
    """The ``vocoder:`` recipe section: model sizes at the top, the loop under ``training:``.

    The defaults are the classic 2 x 10 layer WaveNet (dilations 1..512, 64 residual channels)
    meant for a GPU; recipes/demo.yaml shrinks it to finish in minutes on 2 CPU cores.
    """

    # model (WaveNetConfig minus what the tokenizer fixes: vocab_size, samples_per_code, sample_rate)
    layers_per_cycle: int = 10
    cycles: int = 2
    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 128
    cond_channels: int = 64
    kernel_size: int = 2
    n_classes: int = 256
    # data
    crop_codes: int = 8  # training window in codes (x samples_per_code samples), code-aligned
    val_crops: int = 64  # fixed validation windows, one per val clip where there are enough
    # quality figures and samples
    metrics_clips: int = 4  # val clips resynthesised for metrics.json and samples/
    metrics_seconds: float = 1.0  # of each, from its start (rounded to whole codes)
    temperature: float = 1.0  # sampling temperature of those resyntheses
    training: TrainConfig = field(default_factory=_training_defaults)

    def __post_init__(self):
        for name in ("crop_codes", "val_crops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.metrics_clips < 0 or self.metrics_seconds <= 0:
            raise ValueError("need metrics_clips >= 0 and metrics_seconds > 0")
        self.wavenet(vocab_size=2, samples_per_code=1, sample_rate=1)  # validates the sizes

    def wavenet(self, vocab_size: int, samples_per_code: int, sample_rate: int) -> WaveNetConfig:
        """The WaveNetConfig for a tokenizer with these codes."""
        names = {f.name for f in dataclasses.fields(WaveNetConfig)} - set(DERIVED)
        sizes = {name: getattr(self, name) for name in names}
        return WaveNetConfig(**sizes, vocab_size=vocab_size, samples_per_code=samples_per_code,
                             sample_rate=sample_rate)


def vocoder_config(recipe=None, overrides: dict | None = None) -> VocoderConfig:
    """VocoderConfig from the recipe's ``vocoder:`` section (``training:`` nested) and flat
    command-line overrides of either kind (None = not given)."""
    section = dict(recipe_section(recipe, "vocoder"))
    training = section.pop("training", None) or {}
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None}
    own = {f.name for f in dataclasses.fields(VocoderConfig)} - {"training"}
    train_cfg = build(TrainConfig, VOCODER_TRAINING_DEFAULTS, training,
                      {k: v for k, v in overrides.items() if k not in own}, where="vocoder.training")
    top = build(VocoderConfig, section, {k: v for k, v in overrides.items() if k in own}, where="vocoder")
    return dataclasses.replace(top, training=train_cfg)


def vocoder_dir(run: str | Path) -> Path:
    return Path(run) / VOCODER_DIR


# ---- audio aligned with codes ----------------------------------------------------------

def clip_paths(run: Path) -> dict[str, str]:
    """Clip id -> audio path, from RUN/manifest.jsonl."""
    return {row["id"]: row["path"] for row in read_jsonl(Path(run) / "manifest.jsonl")}


def load_aligned(path: str, n_codes: int, sample_rate: int, samples_per_code: int) -> np.ndarray:
    """A clip's audio at ``sample_rate``, cut or zero-padded to ``n_codes * samples_per_code``."""
    try:
        wav = load_audio(path, sample_rate)
    except AudioError as err:
        hint = " (manifest paths are relative to the folder the run was prepared from)" \
            if not Path(path).is_absolute() and "not found" in err.reason else ""
        raise ArtifactError(f"cannot read the audio of a tokenized clip: {err}{hint}") from None
    n = n_codes * samples_per_code
    if len(wav) < n:
        wav = np.pad(wav, (0, n - len(wav)))
    return wav[:n]


def _load_many(paths: list[str], lengths: list[int], sample_rate: int, spc: int, desc: str, progress: bool):
    """load_aligned over many clips, two decoding threads (soundfile and soxr release the GIL)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = pool.map(lambda job: load_aligned(job[0], job[1], sample_rate, spc), zip(paths, lengths))
        yield from tqdm(jobs, total=len(paths), desc=desc, unit="clip", disable=not progress, leave=False)


def to_mu_law(wav: np.ndarray, n_classes: int = 256) -> np.ndarray:
    """Float audio -> mu-law classes as uint8 (uint16 beyond 256 classes)."""
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    return mu_law_encode(torch.from_numpy(np.ascontiguousarray(wav)), n_classes).numpy().astype(dtype)


class AlignedAudio:
    """Some clips of a split: their codes and their mu-law audio, flat and code-aligned.

    ``audio[(offsets[i] + j) * spc : ...]`` is the audio of code ``codes[offsets[i] + j]``.
    """

    def __init__(self, codes: list[np.ndarray], audio_q: list[np.ndarray], ids: list[str], spc: int):
        self.spc = spc
        self.ids = ids
        self.lengths = np.array([len(c) for c in codes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.codes = np.concatenate(codes).astype(np.int64) if codes else np.zeros(0, np.int64)
        self.audio = np.concatenate(audio_q) if audio_q else np.zeros(0, np.uint8)

    @classmethod
    def load(cls, run: Path, split: RaggedSplit, indices, sample_rate: int, spc: int, n_classes: int,
             progress: bool = True) -> "AlignedAudio":
        paths = clip_paths(run)
        rows = [split.rows[i] for i in indices]
        missing = [r["id"] for r in rows if r["id"] not in paths]
        if missing:
            raise ArtifactError(f"{run}/manifest.jsonl does not list clip {missing[0]} of the tokens: "
                                f"the tokens are from another run")
        codes = [np.asarray(split[i], dtype=np.int64) for i in indices]
        audio = [to_mu_law(w, n_classes) for w in _load_many(
            [paths[r["id"]] for r in rows], [len(c) for c in codes], sample_rate, spc,
            f"{split.split} audio", progress)]
        return cls(codes, audio, [r["id"] for r in rows], spc)

    def crop(self, clip: int, start: int, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
        """(audio classes (n_codes * spc,), codes (n_codes,)) from code ``start`` of clip ``clip``."""
        first = int(self.offsets[clip]) + start
        return (self.audio[first * self.spc:(first + n_codes) * self.spc],
                self.codes[first:first + n_codes])


class CropBatches:
    """Training batches of code-aligned crops, drawn from a numpy Generator only (a batch is a
    pure function of (seed, rank, step): see tokenlm.training). Every (clip, start) pair is
    equally likely, so every code is about equally often in a window."""

    def __init__(self, data: AlignedAudio, crop_codes: int, receptive_field: int):
        self.data = data
        self.crop_codes = crop_codes
        self.receptive_field = receptive_field
        self.clips = np.flatnonzero(data.lengths >= crop_codes)
        counts = data.lengths[self.clips] - crop_codes + 1
        self.ends = np.cumsum(counts)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def __call__(self, rng: np.random.Generator, batch_size: int):
        picks = rng.integers(0, self.total, size=batch_size)
        which = np.searchsorted(self.ends, picks, side="right")
        starts = picks - (self.ends[which] - (self.data.lengths[self.clips[which]] - self.crop_codes + 1))
        return self.batch([(int(self.clips[w]), int(s)) for w, s in zip(which, starts)])

    def batch(self, crops: list[tuple[int, int]]):
        """(audio_q (B, T), codes (B, N), targets (B, T)) LongTensors for (clip, start) pairs."""
        audio, codes = zip(*(self.data.crop(c, s, self.crop_codes) for c, s in crops))
        audio_q = torch.from_numpy(np.stack(audio).astype(np.int64))
        targets = audio_q.clone()
        for row, (_, start) in enumerate(crops):
            if start > 0:  # the true past lies before the crop: do not score what cannot see it
                targets[row, : self.receptive_field] = IGNORE
        return audio_q, torch.from_numpy(np.stack(codes)), targets


def wavenet_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy (nats per sample) over the scored samples, and their number."""
    audio_q, codes, targets = batch
    logits = model(audio_q, codes)  # (B, n_classes, T)
    count = int((targets != IGNORE).sum())
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE), count


def count_scored(batch) -> int:
    return int((batch[2] != IGNORE).sum())


def validation_crops(data: AlignedAudio, n_crops: int, crop_codes: int, seed: int) -> list[tuple[int, int]]:
    """Fixed (clip, start) windows: clips taken in turn, each at a seeded random start."""
    eligible = np.flatnonzero(data.lengths >= crop_codes)
    rng = np.random.default_rng([seed, 7])
    crops = []
    for i in range(min(n_crops, len(eligible) * 4)):
        clip = int(eligible[i % len(eligible)])
        crops.append((clip, int(rng.integers(0, data.lengths[clip] - crop_codes + 1))))
    return crops


def spread(n_items: int, n_wanted: int) -> list[int]:
    """``n_wanted`` indices spread evenly over ``range(n_items)`` (splits are sorted by label)."""
    if n_items <= 0 or n_wanted <= 0:
        return []
    if n_wanted >= n_items:
        return list(range(n_items))
    return sorted({int(round(x)) for x in np.linspace(0, n_items - 1, n_wanted)})


# ---- quality figures -----------------------------------------------------------------------

def logmel_distance_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMSE in dB between two log-mel spectrograms of the same shape (frames, M)."""
    return float((a.float() - b.float()).square().mean().sqrt())


def log_spectral_distance(ref: np.ndarray, est: np.ndarray, n_fft: int, hop: int, floor: float = 1e-10) -> float:
    """LSD in dB: mean over frames of the RMS over frequency of the difference of the log
    power spectra (Hann window, centred STFT; powers floored at ``floor``)."""
    window = torch.hann_window(n_fft)

    def log_power(x: np.ndarray) -> torch.Tensor:
        spec = torch.stft(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), n_fft, hop, window=window,
                          center=True, pad_mode="constant", return_complex=True)  # (F, frames)
        return 10 * torch.log10((spec.real.square() + spec.imag.square()).clamp_min(floor))

    diff = log_power(ref) - log_power(est)
    return float(diff.square().mean(dim=0).sqrt().mean())


@torch.no_grad()
def quality_metrics(vocoder: Vocoder, tokenizer, clips: list[tuple[str, np.ndarray, np.ndarray]],
                    temperature: float, seed: int, progress: bool = False) -> tuple[dict, list[np.ndarray]]:
    """Resynthesise ``clips`` ((id, float audio (n * spc,), codes (n,))) in one batch and
    measure them (module docstring). Returns (metrics, resynthesised audio per clip)."""
    features = tokenizer.coder.features
    log_mel = tokenizer.coder.log_mel.cpu()
    start = time.perf_counter()
    resynth = vocoder.resynthesise_batch([c for _, _, c in clips], temperature=temperature, seed=seed,
                                         batch_size=max(1, len(clips)), progress=progress)
    seconds = time.perf_counter() - start
    per_clip = []
    # Codes map onto whole frames only for non-overlapping patches.
    frames_per_code = features.patch_frames if features.patch_step == features.patch_frames else None
    for (clip_id, audio, codes), out in zip(clips, resynth):
        n_frames = len(codes) * features.patch_step  # frames the codes stand for
        ref = log_mel(torch.from_numpy(audio))[:n_frames]  # (frames, M)
        mulaw = mu_law_decode(mu_law_encode(torch.from_numpy(audio), vocoder.config.n_classes)).numpy()
        row = {
            "id": clip_id,
            "vocoder_logmel_db": logmel_distance_db(ref, log_mel(torch.from_numpy(out))[:n_frames]),
            "vocoder_lsd_db": log_spectral_distance(audio, out, features.n_fft, features.hop_length,
                                                    features.log_floor),
            "mulaw_logmel_db": logmel_distance_db(ref, log_mel(torch.from_numpy(mulaw))[:n_frames]),
            "mulaw_lsd_db": log_spectral_distance(audio, mulaw, features.n_fft, features.hop_length,
                                                  features.log_floor),
        }
        if frames_per_code:
            decoded = tokenizer.decode(torch.from_numpy(codes)).cpu()  # (n * patch_frames, M)
            row["codebook_logmel_db"] = logmel_distance_db(ref, decoded[:n_frames])
        per_clip.append(row)
    n_samples = sum(len(a) for _, a, _ in clips)
    metrics = {key: float(np.mean([r[key] for r in per_clip])) for key in per_clip[0] if key != "id"} \
        if per_clip else {}
    metrics["resynthesis"] = {
        "clips": len(clips), "seconds_per_clip": (n_samples / len(clips) / vocoder.sample_rate) if clips else 0,
        "temperature": temperature, "seed": seed, "generation_seconds": round(seconds, 3),
        "rtf_per_clip": (seconds / (n_samples / vocoder.sample_rate) * len(clips)) if n_samples else None,
        "rtf_batch": (seconds / (n_samples / vocoder.sample_rate / len(clips))) if n_samples else None,
        "device": str(vocoder.device), "lsd_floor": features.log_floor,
    }
    metrics["per_clip"] = per_clip
    return metrics, resynth


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "clip"


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM wav (clipped to [-1, 1])."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


# ---- the stage ------------------------------------------------------------------------------

def _tokens_meta(run: Path, k: int | None) -> tuple[Path, dict, int]:
    tdir = tokens_dir(run, k)
    read_stage(tdir, hint="`tokenlm tokenize`")
    meta = read_json(tdir / "meta.json")
    for key in ("vocab_size", "sample_rate", "samples_per_code"):
        if key not in meta:
            raise ArtifactError(f"{tdir}/meta.json has no {key}")
    vocab = int(meta["vocab_size"])
    if k is not None and vocab != k:
        raise ArtifactError(f"{tdir}/meta.json says vocab_size {vocab}, but K={k} was asked for")
    return tdir, meta, vocab


def train_vocoder(run: str | Path, cfg: VocoderConfig = VocoderConfig(), codebook_size: int | None = None,
                  device: str | None = None, progress: bool = True, *, out_dir: str | Path | None = None,
                  callbacks=()) -> Path:
    """Train the WaveNet of ``run`` on the train split's audio and the codes of codebook size
    ``codebook_size`` (default: the run's current K); write RUN/vocoder (or ``out_dir``).

    Resumes an interrupted run from its work folder's checkpoint; skips when up to date. Works
    alone or as one rank under torchrun. Returns the output folder.
    """
    run = Path(run)
    training = cfg.training if device is None else dataclasses.replace(cfg.training, device=device)
    tdir, meta, vocab = _tokens_meta(run, codebook_size)
    cdir = codebook_dir(run, vocab)
    codebook_key = stage_key(cdir)
    if meta.get("tokenizer_hash") and meta["tokenizer_hash"] != codebook_key:
        raise ArtifactError(f"{tdir} was encoded with tokenizer {meta['tokenizer_hash']}, but {cdir} is now "
                            f"{codebook_key}: rerun `tokenlm tokenize --out {run} -K {vocab}`")
    config = to_dict(cfg)
    config["training"].pop("device")  # where it trains is not what it learns: switching resumes
    stage = Stage(Path(out_dir) if out_dir else vocoder_dir(run), config={**config, "codebook_size": vocab},
                  inputs={"tokens": stage_key(tdir), "codebook": codebook_key})
    if stage.done:
        _say(f"vocoder up to date: {stage.out_dir}")
        return stage.out_dir
    with distributed_stage(stage, training.device) as (work, dist):
        return _train_stage(run, stage, work, tdir, meta, vocab, codebook_key, cfg, training, dist, progress,
                            callbacks)


def _train_stage(run, stage, work, tdir, meta, vocab, codebook_key, cfg, training, dist, progress, callbacks):
    sample_rate, spc = int(meta["sample_rate"]), int(meta["samples_per_code"])
    wn_cfg = cfg.wavenet(vocab, spc, sample_rate)
    rf = wn_cfg.receptive_field
    show = progress and dist.is_main
    splits = {name: RaggedSplit(tdir, name, "uint16") for name in ("train", "val", "test")}
    for split in splits.values():
        if len(split.data) and int(split.data.max()) >= vocab:
            raise ArtifactError(f"{tdir}/{split.split}.bin holds code {int(split.data.max())} >= K={vocab}: "
                                f"the tokens are corrupt or from another tokenizer")

    train_split = splits["train"]
    usable = [i for i, r in enumerate(train_split.rows) if r["length"] >= cfg.crop_codes]
    if not usable:
        longest = max((r["length"] for r in train_split.rows), default=0)
        raise TokenlmError(f"no train clip has crop_codes={cfg.crop_codes} codes (longest: {longest}): "
                           f"lower vocoder.crop_codes")
    train_audio = AlignedAudio.load(run, train_split, usable, sample_rate, spc, wn_cfg.n_classes, show)
    batches = CropBatches(train_audio, cfg.crop_codes, rf)

    # Validation: fixed windows of val clips (loaded alone, not the whole split).
    val_split = splits["val"]
    val_usable = [i for i, r in enumerate(val_split.rows) if r["length"] >= cfg.crop_codes]
    val = None
    if val_usable:
        chosen = [val_usable[i] for i in spread(len(val_usable), cfg.val_crops)]
        val_audio = AlignedAudio.load(run, val_split, chosen, sample_rate, spc, wn_cfg.n_classes, show)
        val_batcher = CropBatches(val_audio, cfg.crop_codes, rf)
        crops = validation_crops(val_audio, cfg.val_crops, cfg.crop_codes, training.seed)
        val = [val_batcher.batch(crops[i:i + training.batch_size])
               for i in range(0, len(crops), training.batch_size)]

    torch.manual_seed(training.seed)  # the initial weights
    model = WaveNet(wn_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    if dist.is_main:
        _say(f"vocoder: {n_params / 1e6:.2f} M parameters, {wn_cfg.cycles}x{wn_cfg.layers_per_cycle} layers, "
             f"receptive field {rf} samples ({rf / sample_rate * 1e3:.0f} ms), {len(usable)} train clips "
             f"({len(train_audio.audio) / sample_rate / 60:.1f} min), crops of {cfg.crop_codes} codes "
             f"({cfg.crop_codes * spc} samples), K={vocab}, {dist.world_size} process(es) on {dist.device}")
    result = train(
        model, training, work,
        loss_fn=wavenet_loss,
        train_batch=batches,
        val_batches=(lambda: val) if val else None,
        val_metrics=lambda loss: {"val_bits_per_sample": loss / math.log(2)},
        count_items=count_scored,
        items_name="samples",
        dist=dist,
        progress=progress,
        callbacks=callbacks,
        desc="vocoder",
    )
    if not dist.is_main:
        dist.barrier()
        return stage.out_dir

    info = {"sample_rate": sample_rate, "samples_per_code": spc, "hop_length": _hop_length(run),
            "code_rate": sample_rate / spc, "codebook_size": vocab, "tokenizer_hash": codebook_key,
            "tokens_key": stage_key(tdir), "mu_law_classes": wn_cfg.n_classes, "receptive_field": rf}
    vocoder = Vocoder(model.eval(), info, source=stage.out_dir)
    metrics = {"steps": result.step, "best_step": result.best_step, "val_loss": result.best_val_loss,
               "val_bits_per_sample": (result.best_val_loss / math.log(2)) if result.best_val_loss else None,
               "parameters": n_params, "receptive_field": rf,
               "train_clips": len(usable), "train_seconds": len(train_audio.audio) / sample_rate,
               "trained_samples": result.step * training.batch_size * cfg.crop_codes * spc * dist.world_size}
    metrics.update(_measure(run, vocoder, vocab, splits, cfg, training.seed, work, show))
    save_vocoder(model, work, info)
    write_json(work / "metrics.json", metrics)
    stage.finish(extra={"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
    if "vocoder_logmel_db" in metrics:
        codebook = metrics.get("codebook_logmel_db")
        _say(f"vocoder: resynthesis log-mel distance {metrics['vocoder_logmel_db']:.2f} dB, LSD "
             f"{metrics['vocoder_lsd_db']:.2f} dB (codes alone: "
             f"{'n/a' if codebook is None else f'{codebook:.2f} dB'}, mu-law alone: "
             f"{metrics['mulaw_logmel_db']:.2f} dB) -> {stage.out_dir}")
    dist.barrier()
    return stage.out_dir


def _hop_length(run: Path) -> int | None:
    config = read_json(tokenizer_dir(run) / "config.json")
    return config.get("features", {}).get("hop_length")


def _measure(run, vocoder, vocab, splits, cfg, seed, work, progress) -> dict:
    """metrics.json's quality figures and samples/*.wav on excerpts of held-out clips."""
    from tokenlm.tokenizer import AudioTokenizer

    if cfg.metrics_clips == 0:
        return {}
    split = next((splits[s] for s in ("val", "test", "train") if len(splits[s])), None)
    if split is None:
        return {}
    tokenizer = AudioTokenizer.load(tokenizer_dir(run), codebook_size=vocab)
    vocoder.check_tokenizer(tokenizer)
    n_codes = max(1, round(cfg.metrics_seconds * vocoder.code_rate))
    paths = clip_paths(run)
    clips = []
    for i in spread(len(split), cfg.metrics_clips):
        row, codes = split.rows[i], np.asarray(split[i], dtype=np.int64)
        if row["id"] not in paths:
            raise ArtifactError(f"{run}/manifest.jsonl does not list clip {row['id']} of the tokens")
        n = int(min(n_codes, len(codes)))
        audio = load_aligned(paths[row["id"]], len(codes), vocoder.sample_rate, vocoder.samples_per_code)
        clips.append((row["id"], audio[: n * vocoder.samples_per_code], codes[:n]))
    clips = [c for c in clips if len(c[2])]
    if not clips:
        return {}
    metrics, resynth = quality_metrics(vocoder, tokenizer, clips, cfg.temperature, seed, progress=progress)
    metrics["resynthesis"]["split"] = split.split
    for i, ((clip_id, audio, _), out) in enumerate(zip(clips, resynth)):
        stem = f"{i:02d}_{_safe_name(clip_id)}"
        write_wav(work / SAMPLES_DIR / f"{stem}_original.wav", audio, vocoder.sample_rate)
        write_wav(work / SAMPLES_DIR / f"{stem}_resynth.wav", out, vocoder.sample_rate)
    return metrics


def run_from_recipe(recipe, run_dir: Path, device) -> Path:
    """The ``vocoder`` stage of ``tokenlm run`` (for tokenlm.stages.run.RUNNERS)."""
    return train_vocoder(run_dir, vocoder_config(recipe), device=device)


def _say(message: str) -> None:
    click.echo(message, err=True)


# ---- decode and generate ----------------------------------------------------------------

def load_for_run(run: str | Path, codebook_size: int | None = None, device=None):
    """(Vocoder, AudioTokenizer) of a run, checked against each other."""
    from tokenlm.tokenizer import AudioTokenizer

    run = Path(run)
    if not (vocoder_dir(run) / "config.json").is_file():
        raise ArtifactError(f"{run} has no vocoder yet: run `tokenlm vocoder {run}` first")
    vocoder = Vocoder.load(vocoder_dir(run), device=device)
    tokenizer = AudioTokenizer.load(tokenizer_dir(run), codebook_size=codebook_size or vocoder.codebook_size)
    vocoder.check_tokenizer(tokenizer)
    return vocoder, tokenizer


def decode_file(run: str | Path, in_path: str | Path, out_path: str | Path, *, codebook_size: int | None = None,
                temperature: float = 1.0, seed: int = 0, device=None, progress: bool = True) -> dict:
    """Audio file -> codes (the run's tokenizer) -> audio (the run's vocoder) -> ``out_path``.
    The output has exactly codes x samples_per_code samples. Returns a summary dict."""
    vocoder, tokenizer = load_for_run(run, codebook_size, device)
    wav = load_audio(in_path, tokenizer.sample_rate, min_samples=tokenizer.coder.features.n_fft)
    codes = tokenizer.encode(wav, tokenizer.sample_rate).numpy()
    start = time.perf_counter()
    audio = vocoder.resynthesise(codes, temperature=temperature, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    write_wav(out_path, audio, vocoder.sample_rate)
    duration = len(audio) / vocoder.sample_rate
    return {"codes": int(len(codes)), "samples": int(len(audio)), "seconds": duration,
            "synthesis_seconds": seconds, "rtf": seconds / duration if duration else None, "out": str(out_path)}


def generate_file(run: str | Path, out_path: str | Path, *, prompt: str | Path | None = None, seconds: float = 2.0,
                  temperature: float = 1.0, top_k: int = 0, seed: int = 0, vocoder_temperature: float = 1.0,
                  prime: bool = True, device=None, progress: bool = True) -> dict:
    """Encode ``prompt`` (or start from nothing), continue its codes for ``seconds`` with
    RUN/lm, decode prompt + continuation with RUN/vocoder into ``out_path``.

    With ``prime`` the prompt's own audio is teacher-forced into the WaveNet (it comes out
    as the input, mu-law quantised) and only the continuation is sampled; without it the
    whole clip is resynthesised from codes. Returns a summary dict (also written to
    ``out_path`` with a .json suffix, codes included).
    """
    from tokenlm.lm import CodeLM

    run = Path(run)
    if seconds <= 0:
        raise ConfigError(f"--seconds must be > 0, got {seconds}")
    if not (run / "lm" / "config.json").is_file():
        raise ArtifactError(f"{run} has no language model yet: run `tokenlm pretrain {run}` first")
    vocoder, tokenizer = load_for_run(run, None, device)
    lm = CodeLM.load(run / "lm", device=device)
    if lm.codebook_size != vocoder.codebook_size:
        raise ArtifactError(f"{run}/lm was trained on K={lm.codebook_size} codes but {run}/vocoder on "
                            f"K={vocoder.codebook_size}: retrain one of them on the same codes")
    lm_hash = lm.info.get("tokenizer_hash")
    if lm_hash and vocoder.tokenizer_hash and lm_hash != vocoder.tokenizer_hash:
        raise ArtifactError(f"{run}/lm was trained on tokenizer {lm_hash} but {run}/vocoder on "
                            f"{vocoder.tokenizer_hash}: retrain one of them on the same codes")
    spc = vocoder.samples_per_code
    wav = np.zeros(0, np.float32)
    prompt_codes = np.zeros(0, np.int64)
    if prompt is not None:
        wav = load_audio(prompt, tokenizer.sample_rate, min_samples=tokenizer.coder.features.n_fft)
        prompt_codes = tokenizer.encode(wav, tokenizer.sample_rate).numpy().astype(np.int64)
    n_new = max(1, round(seconds * vocoder.code_rate))
    new = lm.generate(prompt_codes, n_new, temperature=temperature, top_k=top_k, seed=seed).numpy()
    codes = np.concatenate([prompt_codes, new])
    start = time.perf_counter()
    audio = vocoder.resynthesise(codes, prompt=wav if (prime and len(wav)) else None,
                                 temperature=vocoder_temperature, seed=seed, progress=progress)
    synthesis = time.perf_counter() - start
    write_wav(out_path, audio, vocoder.sample_rate)
    summary = {
        "prompt": str(prompt) if prompt else None, "prompt_codes": int(len(prompt_codes)),
        "prompt_seconds": len(prompt_codes) * spc / vocoder.sample_rate, "primed": bool(prime and len(wav)),
        "generated_codes": int(n_new), "seconds": len(audio) / vocoder.sample_rate,
        "temperature": temperature, "top_k": top_k, "seed": seed, "vocoder_temperature": vocoder_temperature,
        "synthesis_seconds": round(synthesis, 3), "codebook_size": vocoder.codebook_size,
        "code_rate": vocoder.code_rate, "codes": codes.tolist(), "out": str(out_path),
    }
    write_json(Path(out_path).with_suffix(".json"), summary)
    return summary


# ---- command line -----------------------------------------------------------------------

@click.command("vocoder")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("-K", "--codebook-size", type=int, help="Which codes to condition on (default: the run's current K).")
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (section vocoder, with vocoder.training).")
@click.option("--steps", type=int, help="Optimiser steps. [20000]")
@click.option("--batch-size", type=int, help="Crops per step and process. [8]")
@click.option("--lr", type=float, help="Peak learning rate. [1e-3]")
@click.option("--warmup-steps", type=int, help="Linear warmup steps before the cosine decay. [200]")
@click.option("--eval-every", type=int, help="Steps between validations and checkpoints. [500]")
@click.option("--seed", type=int, help="Seed of the weights, crops and sampling. [0]")
@click.option("--layers-per-cycle", type=int, help="Dilated layers per cycle (dilations 1..2^(n-1)). [10]")
@click.option("--cycles", type=int, help="Cycles of dilations. [2]")
@click.option("--residual-channels", type=int, help="Residual width. [64]")
@click.option("--gate-channels", type=int, help="Dilated conv output (tanh half + sigmoid half). [128]")
@click.option("--skip-channels", type=int, help="Skip width. [128]")
@click.option("--cond-channels", type=int, help="Code embedding width. [64]")
@click.option("--crop-codes", type=int, help="Training window in codes. [8]")
@click.option("--metrics-clips", type=int, help="Val clips resynthesised for metrics.json. [4]")
@click.option("--metrics-seconds", type=float, help="Seconds of each, from its start. [1.0]")
@click.option("--device", help="cpu, cuda or auto (default).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def command(run, codebook_size, recipe, device, no_progress, **options):
    """Train the WaveNet decoder on the train split's (audio, codes) and save it to RUN/vocoder.

    Rerunning after an interruption (Ctrl-C, kill -9) resumes from the last checkpoint.

    \b
      tokenlm vocoder runs/demo --config recipes/demo.yaml
      tokenlm vocoder runs/demo -K 64 --steps 2000
      torchrun --nproc_per_node=2 -m tokenlm vocoder runs/demo
    """
    run = run or recipe_section(recipe, "run").get("dir")
    if not run:
        raise TokenlmError("need RUN (or --config with run.dir)")
    cfg = vocoder_config(recipe, options)
    device = device or recipe_section(recipe, "run").get("device")
    out = train_vocoder(run, cfg, codebook_size=codebook_size, device=device, progress=not no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"vocoder: {out}\nmetrics: {out / 'metrics.json'}\nsamples: {out / SAMPLES_DIR}")


@click.command("decode")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("in_path", metavar="IN.wav", type=click.Path(dir_okay=False))
@click.argument("out_path", metavar="OUT.wav", type=click.Path(dir_okay=False))
@click.option("-K", "--codebook-size", type=int, help="Codebook to encode with (default: the vocoder's).")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="WaveNet sampling temperature; 0 = likeliest sample each step.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", help="cpu, cuda or auto (default).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def decode_command(run, in_path, out_path, codebook_size, temperature, seed, device, no_progress):
    """Resynthesis: IN.wav -> codes (RUN's tokenizer) -> audio (RUN's WaveNet) -> OUT.wav.

    \b
      tokenlm decode runs/demo data/demo/piano/piano_gm000_000.wav resynth.wav
    """
    summary = decode_file(run, in_path, out_path, codebook_size=codebook_size, temperature=temperature, seed=seed,
                          device=device, progress=not no_progress)
    click.echo(f"{in_path}: {summary['codes']} codes -> {out_path} ({summary['seconds']:.2f} s; synthesis "
               f"{summary['synthesis_seconds']:.1f} s, RTF {summary['rtf']:.1f})")


@click.command("generate")
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("out_path", metavar="OUT.wav", type=click.Path(dir_okay=False))
@click.option("--prompt", type=click.Path(dir_okay=False), help="Audio to continue (default: start from nothing).")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Seconds to add after the prompt.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="LM sampling temperature; 0 = greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="LM samples among the k likeliest codes; 0 = all.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--vocoder-temperature", type=float, default=1.0, show_default=True,
              help="WaveNet sampling temperature.")
@click.option("--prime/--no-prime", default=True, show_default=True,
              help="Feed the prompt's own audio to the WaveNet (else resynthesise it from its codes).")
@click.option("--device", help="cpu, cuda or auto (default).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def generate_command(run, out_path, prompt, seconds, temperature, top_k, seed, vocoder_temperature, prime, device,
                     no_progress):
    """Continue audio: encode --prompt, continue its codes with RUN/lm, decode with RUN/vocoder.

    \b
      tokenlm generate runs/demo --prompt data/demo/piano/piano_gm000_000.wav --seconds 3 out.wav
    """
    summary = generate_file(run, out_path, prompt=prompt, seconds=seconds, temperature=temperature, top_k=top_k,
                            seed=seed, vocoder_temperature=vocoder_temperature, prime=prime, device=device,
                            progress=not no_progress)
    click.echo(f"{summary['prompt_codes']} prompt + {summary['generated_codes']} new codes -> {out_path} "
               f"({summary['seconds']:.2f} s; synthesis {summary['synthesis_seconds']:.1f} s)\n"
               f"info: {Path(out_path).with_suffix('.json')}")
