"""The representations the probe compares: one vector per labelled clip, and what it cost.

- ``logmel_stats``: mean + std of each mel bin over time, the floor every learned
  representation must beat;
- ``bag_of_codes``: the normalised histogram of a clip's codes (RUN/tokens/k{K}; with several
  codes per patch, one histogram per level side by side);
- ``autoencoder_bottleneck``: the tokenizer's un-quantised bottleneck per patch;
- ``quantised_bottleneck``: the same with each patch replaced by what its codes stand for
  (its centroid, or the sum / concatenation of its levels'), pooled the same way: the rung
  between the bottleneck and the codes, where quantisation alone loses what it loses;
- ``lm_layers``: the code LM's hidden states per code, one per layer (0 is the embedding
  output), and optionally all of those layers concatenated;
- ``simclr_embeddings``: the SimCLR trunk's embedding, averaged over a clip's windows.

The autoencoder, quantised and LM rows are sequences: they carry their statistics over time
(``tokenlm.evaluation.pooling``) and the probe pools them (mean, mean+std or mean+max, chosen
on val).

The clips are a task's (their features and codes); the models that read them (tokenizer, LM,
SimCLR) are the run's, trained on its pretraining corpus. A representation whose artifacts
the run lacks (no tokens, tokenizer or LM yet) raises
``Unavailable`` with the reason, and the probe records the row as skipped. torch, the
tokenizer and the LM are imported inside the functions that need them, so that
``tokenlm probe --help`` stays fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenlm.core.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.core.fileio import read_json
from tokenlm.data.store import RaggedSplit, index_file
from tokenlm.evaluation.clips import LabelledClips
from tokenlm.evaluation.lm_readings import keep_reading, read_codes, reading_title
from tokenlm.evaluation.pooling import time_statistics
from tokenlm.lm.code_lm import CodeLM
from tokenlm.run.artifacts import read_stage
from tokenlm.run.rundir import METRICS, SPLITS, RunDir, is_finished, read_tokens_meta
from tokenlm.tokenizer.tokenizer import AudioTokenizer


class Unavailable(Exception):
    """A representation cannot be built on this run (yet); the message says why."""


@dataclass
class Representation:
    """One vector per clip, aligned with ``LabelledClips``, plus what it cost.

    A sequence representation has no ``vectors`` but ``statistics`` over time, which the probe
    pools; ``pooling`` is its customary pooling, the one that wins ties on val.
    """

    name: str
    title: str
    vectors: np.ndarray | None  # (N, D); None when the probe pools ``statistics``
    encoder_params: int | None = None
    encoder_train_s: float | None = None
    flops_per_second: float | None = None
    extract_s: float = 0.0
    notes: str = ""
    statistics: dict[str, np.ndarray] = field(default_factory=dict)  # mean, std, max over time: (N, D) each
    pooling: str = "mean"


@dataclass(frozen=True)
class Codes:
    """Every labelled clip's codes by clip id, from one tokens folder."""

    by_id: dict[str, np.ndarray]  # (T,) codes, or (T, levels) with several codes per patch
    codebook_size: int
    directory: Path
    levels: int = 1


@dataclass(frozen=True)
class TokenizerCost:
    """The tokenizer's encoder side, when known: what codes cost before the LM."""

    encoder_params: int | None = None  # the autoencoder's encoder
    codebook_params: int = 0  # K x d centroids
    autoencoder_train_s: float | None = None  # the autoencoder stage
    train_s: float | None = None  # autoencoder + codebook stages

    @property
    def code_params(self) -> int | None:
        """Encoder + codebook: the parameters that turn log-mel into codes."""
        return None if self.encoder_params is None else self.encoder_params + self.codebook_params


# ---- representations ------------------------------------------------------------------

def logmel_stats(clips: LabelledClips, progress: bool = True) -> Representation:
    """Mean and std of each mel bin over the clip's frames: (N, 2 * n_mels)."""
    start = time.perf_counter()
    bar = _bar(range(len(clips)), "log-mel", progress)
    vectors = np.stack([_mean_std(clips.logmel(i).astype(np.float32)) for i in bar])  # (N, 2 M)
    return Representation("logmel_stats", "log-mel statistics (mean+std per bin)", vectors, encoder_params=0,
                          encoder_train_s=0.0, extract_s=time.perf_counter() - start)


def bag_of_codes(clips: LabelledClips, codes: Codes, cost: TokenizerCost) -> Representation:
    """Normalised histogram of each clip's codes: (N, K); with L codes per patch, each
    level's histogram side by side, (N, L * K)."""
    start = time.perf_counter()
    size, levels = codes.codebook_size, codes.levels
    vectors = np.zeros((len(clips), levels * size), dtype=np.float32)
    for i, clip_id in enumerate(clips.ids):
        clip = codes.by_id[clip_id].astype(np.int64).reshape(-1, levels)
        offsets = clip + size * np.arange(levels)  # level l's code c counts in column l * K + c
        counts = np.bincount(offsets.ravel(), minlength=levels * size)
        vectors[i] = counts / max(len(clip), 1)
    shape = f"K={size}" if levels == 1 else f"{levels} x K={size}"
    return Representation("bag_of_codes", f"bag of codes ({shape})", vectors, encoder_params=cost.code_params,
                          encoder_train_s=cost.train_s, extract_s=time.perf_counter() - start,
                          notes="encoder = autoencoder encoder + codebook")


def autoencoder_bottleneck(clips: LabelledClips, models: RunDir, codebook_size: int | None, device,
                           progress: bool = True) -> Representation:
    """The tokenizer of ``models`` (a run) on the clips: its un-quantised bottleneck per patch,
    as statistics over patches, (N, d) each, mean+std pooled unless val says otherwise."""
    # Any codebook will do (the bottleneck comes before quantisation), but loading needs one.
    tokenizer = load_tokenizer(models, codebook_size, device)
    statistics, seconds = _per_patch_statistics(clips, tokenizer, lambda frames: tokenizer.embed_frames(frames),
                                                "autoencoder", progress)
    cost = tokenizer_cost(models, tokenizer)
    return Representation("autoencoder", "autoencoder bottleneck", None, encoder_params=cost.encoder_params,
                          encoder_train_s=cost.autoencoder_train_s, extract_s=seconds,
                          statistics=statistics, pooling="mean+std")


def quantised_bottleneck(clips: LabelledClips, models: RunDir, codebook_size: int | None, device,
                         progress: bool = True) -> Representation:
    """The autoencoder row after quantisation: each patch's bottleneck replaced by what its
    codes (the codebook of ``codebook_size``) stand for, as statistics over patches, pooled as
    the autoencoder row is. Between the two, what quantisation alone loses."""
    tokenizer = load_tokenizer(models, codebook_size, device)
    statistics, seconds = _per_patch_statistics(clips, tokenizer, lambda frames: tokenizer.quantise_frames(frames),
                                                "quantised", progress)
    cost = tokenizer_cost(models, tokenizer)
    quantizer = tokenizer.quantizer
    shape = f"K={quantizer.codebook_size}" if quantizer.levels == 1 else \
        f"{quantizer.kind}, {quantizer.levels} x K={quantizer.codebook_size}"
    return Representation("quantised", f"quantised bottleneck ({shape})", None, encoder_params=cost.code_params,
                          encoder_train_s=cost.train_s, extract_s=seconds,
                          statistics=statistics, pooling="mean+std",
                          notes="each patch replaced by its codes' centroid(s)")


def _per_patch_statistics(clips: LabelledClips, tokenizer, per_patch, what: str, progress: bool):
    """({mean, std, max} over patches, (N, d) each, seconds): ``per_patch(frames)`` of every clip's
    log-mel, (T, M) dB -> (patches, d); the autoencoder and quantised rows differ only there."""
    _check_same_features(tokenizer, clips)
    start = time.perf_counter()
    per_clip = []
    for i in _bar(range(len(clips)), what, progress):
        frames = torch.from_numpy(clips.logmel(i).astype(np.float32)).to(tokenizer.device)  # (T, M) dB
        per_clip.append(time_statistics(per_patch(frames).float().cpu().numpy()))
    return _stacked(per_clip), time.perf_counter() - start


def lm_layers(clips: LabelledClips, codes: Codes, lm_dir: Path, layers: str, batch_clips: int,
              cost: TokenizerCost, device, progress: bool = True, concat: bool = False,
              reading: str = "once") -> list[Representation]:
    """The code LM's hidden states (the LM at ``lm_dir``): their statistics over time, one
    representation per layer of ``layers`` ("all" or "0,2,4"), mean pooled unless val says
    otherwise; with ``concat``, then ``lm_concat``: those layers side by side. ``reading``:
    how each clip is fed (tokenlm.evaluation.lm_readings: once, or twice keeping the second).

    Every statistic comes out of one pass of the LM over the codes."""
    if not is_finished(lm_dir):
        raise Unavailable(f"no trained LM at {lm_dir} (run `tokenlm pretrain {clips.run.root}` first)")
    lm = CodeLM.load(lm_dir, device=device)
    if lm.levels != codes.levels:
        raise Unavailable(f"the LM was trained on {lm.levels} code(s) per patch, {codes.directory} holds "
                          f"{codes.levels} (tokenizer.levels / groups)")
    if lm.codebook_size != codes.codebook_size:
        raise Unavailable(f"the LM was trained on {lm.codebook_size}-code tokens, the probed codes have "
                          f"{codes.codebook_size} (pass -K {lm.codebook_size})")
    start = time.perf_counter()
    per_clip = []  # statistics over time, (layers + 1, d) each
    # Several LM batches per call (the LM sorts windows by length inside it), bounded by codes,
    # not clips: a call holds every hidden state of its clips until they are pooled.
    clip_codes = read_codes([codes.by_id[clip_id] for clip_id in clips.ids], reading)
    for batch in _bar(list(chunks_by_length(clip_codes, 4 * batch_clips * lm.context)), "LM", progress):
        per_clip += [time_statistics(keep_reading(states, reading).numpy(), axis=1)
                     for states in lm.hidden_states(batch, batch_clips)]
    stacked = _stacked(per_clip)  # (N, layers + 1, d) each
    n_states = stacked["mean"].shape[1]
    extract_s = (time.perf_counter() - start) / n_states
    params = _module_params(lm.model)
    if cost.code_params is not None:
        params += cost.code_params
    train_s = _stage_seconds(lm_dir)
    if train_s is not None and cost.train_s is not None:
        train_s += cost.train_s
    chosen = parse_layers(layers, n_states)
    flops = lm_flops_per_second(lm, lm.code_rate)
    reps = [
        Representation(f"lm_layer_{n}", f"LM layer {n}" + (" (embeddings)" if n == 0 else ""), None,
                       encoder_params=params, encoder_train_s=train_s, extract_s=extract_s, flops_per_second=flops,
                       notes=f"encoder = tokenizer + LM; {reading_title(reading, lm.objective)}",
                       statistics={k: v[:, n] for k, v in stacked.items()})
        for n in chosen
    ]
    if concat:
        reps.append(Representation(
            "lm_concat", f"LM layers {','.join(map(str, chosen))} concatenated", None, encoder_params=params,
            encoder_train_s=train_s, flops_per_second=flops, extract_s=extract_s * len(chosen),
            notes="encoder = tokenizer + LM",
            statistics={k: v[:, chosen].reshape(len(v), -1) for k, v in stacked.items()}))
    return reps


def lm_flops_per_second(lm: CodeLM, code_rate: float | None) -> float | None:
    """FLOPs of one second of codes (BOS + code_rate codes) through the LM's transformer."""
    if not code_rate:
        return None
    n = min(int(round(code_rate)) + 1, lm.context)
    ids = torch.zeros(1, n, dtype=torch.long, device=lm.device)
    from tokenlm.core.flops import forward_flops

    # Counted with eager attention: torch's counter does not see inside the fused CPU kernel.
    fast = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        return float(forward_flops(lambda: lm.model.transformer(input_ids=ids)))
    finally:
        lm.model.set_attn_implementation(fast)


def simclr_embeddings(clips: LabelledClips, simclr_dir: Path, device, progress: bool = True,
                      embedding: str = "pooled") -> Representation:
    """The SimCLR trunk pretrained on the run's corpus (``simclr_dir``) on the clips: its
    embedding averaged over each clip's windows, the input normalised as in its training;
    ``embedding`` bands keeps each frequency band's channels (models.simclr.FrequencyBands)."""
    from tokenlm.baselines.cnn import embed_clips, load_model
    from tokenlm.models.simclr import FrequencyBands

    if not is_finished(simclr_dir):
        raise Unavailable(f"no trained SimCLR at {simclr_dir} (run `tokenlm baselines --baselines simclr` first)")
    trunk, record = load_model(simclr_dir, device)
    ours = record["features"]
    for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
        if ours.get(name) != getattr(clips.feature_meta.config, name):
            raise ArtifactError(f"SimCLR at {simclr_dir} was trained on features with {name}={ours.get(name)}, "
                                f"the task's have {getattr(clips.feature_meta.config, name)}")
    mean = np.asarray(record["norm"]["mean"], dtype=np.float32)
    std = np.asarray(record["norm"]["std"], dtype=np.float32)
    start = time.perf_counter()
    normalised = [(clips.logmel(i).astype(np.float32) - mean) / std for i in _bar(range(len(clips)), "SimCLR", progress)]
    reader = FrequencyBands(trunk) if embedding == "bands" else trunk
    vectors = embed_clips(reader, normalised, record["crop_frames"], device)
    metrics = read_json(simclr_dir / METRICS)
    title = "SimCLR CNN trunk (self-supervised" + (", frequency bands kept)" if embedding == "bands" else ")")
    return Representation("simclr", title, vectors,
                          encoder_params=metrics.get("encoder_params"), encoder_train_s=metrics.get("train_seconds"),
                          flops_per_second=metrics.get("flops_per_second"), extract_s=time.perf_counter() - start,
                          notes="pretrained on the run's corpus")


def parse_layers(spec: str, n_states: int) -> list[int]:
    """Layer numbers to probe out of ``n_states`` (= LM layers + 1)."""
    if spec == "all":
        return list(range(n_states))
    layers = [int(v) for v in spec.split(",")]
    too_deep = [n for n in layers if n >= n_states]
    if too_deep:
        raise ConfigError(f"layers {too_deep} asked for, but the LM has layers 0..{n_states - 1}")
    return layers


# ---- codes and tokenizer --------------------------------------------------------------

def load_codes(clips: LabelledClips, codebook_size: int | None) -> Codes:
    """Every labelled clip's codes (TASK/tokens/k{K} of the clips' run; K: ``codebook_size``,
    else the run's).

    Raises Unavailable when the run has no such tokens, ArtifactError when the codes disagree
    with the features about a clip's split or lie outside the codebook.
    """
    directory = _tokens_folder(clips.run, codebook_size)
    meta = read_tokens_meta(directory)
    size, levels = meta.codebook_size, meta.levels
    by_id, split_of = {}, {}
    for split in SPLITS:
        if not (directory / index_file(split)).is_file():
            continue
        for row, array in RaggedSplit(directory, split, "uint16", width=levels):
            by_id[str(row["id"])] = np.asarray(array)
            split_of[str(row["id"])] = split
    for clip_id, split in zip(clips.ids, clips.splits):
        if clip_id in split_of and split_of[clip_id] != split:
            raise ArtifactError(f"clip {clip_id} is in {split_of[clip_id]} in {directory} but in {split} in the "
                                f"features: the tokens are out of date (rerun `tokenlm tokenize`)")
    missing = [i for i in clips.ids if i not in by_id]
    if missing:
        raise Unavailable(f"{len(missing)} labelled clip(s) have no codes in {directory} (e.g. {missing[0]})")
    if any(len(c) and int(c.max()) >= size for c in by_id.values()):
        raise ArtifactError(f"codes beyond the codebook of {size} in {directory}: the tokens are corrupt")
    return Codes(by_id, size, directory, levels)


def tokens_folder_or_none(run: RunDir, codebook_size: int | None) -> Path | None:
    """The tokens folder the probe reads, or None when the run has none to read."""
    try:
        return _tokens_folder(run, codebook_size)
    except Unavailable:
        return None


def _tokens_folder(run: RunDir, codebook_size: int | None) -> Path:
    """RUN/tokens/k{K}: K given, else the run's current one, else the only one tokenized."""
    codebook_size = codebook_size or run.codebook_size_or_none()
    if codebook_size is None:
        found = run.tokenized_sizes()
        if len(found) != 1:
            raise Unavailable(f"no codes to probe in {run.tokens_root}" if not found else
                              f"several codebooks in {run.tokens_root} ({', '.join(f'k{k}' for k in found)}): "
                              "pass -K")
        codebook_size = found[0]
    directory = run.tokens(codebook_size)
    if not is_finished(directory):
        raise Unavailable(f"no codes at {directory} (run `tokenlm tokenize --out {run.root} -K {codebook_size}` "
                          "first)")
    return directory


def load_tokenizer(run: RunDir, codebook_size: int | None, device):
    """The run's AudioTokenizer; Unavailable when it has none (or no codebook of that size)."""
    if not is_finished(run.tokenizer):
        raise Unavailable(f"no trained tokenizer at {run.tokenizer} (run `tokenlm tokenize` first)")
    try:
        return AudioTokenizer.load(run.tokenizer, codebook_size=codebook_size, device=device)
    except ArtifactError as err:  # e.g. no codebook of that size: the other rows still stand
        raise Unavailable(str(err)) from None


def tokenizer_cost(run: RunDir, tokenizer=None, codebook_size: int | None = None) -> TokenizerCost:
    """Parameters and training time of the tokenizer (loaded on CPU unless given); what is
    unknown (no tokenizer in the run) stays None."""
    autoencoder_s = _stage_seconds(run.tokenizer)
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(run, codebook_size, "cpu")
        except (Unavailable, TokenlmError):
            return TokenizerCost(autoencoder_train_s=autoencoder_s)
    codebook_s = _stage_seconds(run.codebook(tokenizer.codebook_size))
    return TokenizerCost(
        encoder_params=_module_params(tokenizer.coder.autoencoder.encoder),
        codebook_params=int(tokenizer.quantizer.codebooks.size),
        autoencoder_train_s=autoencoder_s,
        train_s=None if autoencoder_s is None else autoencoder_s + (codebook_s or 0.0),
    )


def _check_same_features(tokenizer, clips: LabelledClips) -> None:
    """The tokenizer must read log-mel computed the way the run's features were."""
    features = clips.feature_meta.config
    for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
        ours, theirs = getattr(tokenizer.coder.features, name), getattr(features, name)
        if ours != theirs:
            raise ArtifactError(f"the tokenizer was trained on features with {name}={ours}, "
                                f"the run's features have {theirs}: rebuild one of them")


# ---- helpers --------------------------------------------------------------------------

def _mean_std(x: np.ndarray) -> np.ndarray:
    """(T, D) -> (2 D,): mean and std over time."""
    return np.concatenate([x.mean(axis=0), x.std(axis=0)]).astype(np.float32)


def _stacked(per_clip: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-clip statistics stacked into one (N, ...) array per statistic."""
    return {name: np.stack([s[name] for s in per_clip]) for name in per_clip[0]}


def _module_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stage_seconds(directory: Path) -> float | None:
    """How long a finished stage took to build; None when unknown."""
    try:
        return float(read_stage(directory).get("wall_time_s"))
    except (ArtifactError, TypeError, ValueError):
        return None


def chunks_by_length(items: list, max_total: int):
    """Consecutive runs of ``items`` whose lengths add up to at most ``max_total`` (an item
    longer than that on its own)."""
    chunk, total = [], 0
    for item in items:
        if chunk and total + len(item) > max_total:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += len(item)
    if chunk:
        yield chunk


def _bar(iterable, desc: str, progress: bool):
    from tokenlm.core.progress import progress_bar

    return progress_bar(iterable, desc=desc, unit="clip" if desc != "LM" else "batch", enabled=progress, leave=False)
