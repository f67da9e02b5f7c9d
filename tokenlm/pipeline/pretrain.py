"""Stage 4: train the GPT code LM on RUN/tokens/k{K} and save it to RUN/lm.

    RUN/lm/config.json, model.safetensors   GPT2LMHeadModel.from_pretrained(RUN/lm) loads it
    RUN/lm/train_log.csv                     step, lr, loss, val_loss, val_ppl, val_bits_per_s, tokens_per_s
    RUN/lm/metrics.json                      val/test perplexity next to unigram and bigram references
    RUN/lm/ckpt/                             last/best.json + .safetensors (resume state, best val
                                             weights), while training; kept with --keep-checkpoints

Training sequences are **clip-aligned and packed**: every sequence starts at a clip's BOS,
and is filled up to the context with further clips, each behind its own BOS, drawn at random
(a clip longer than the context opening a sequence gives a random context-long crop).
Why not random windows across the flat token file: clips sit there in manifest order, where
neighbours share an instrument or speaker, so a window crossing clip boundaries could read
the label off the previous clip, while randomly drawn neighbours carry no information about
the clip; and the LM is used per clip, from BOS at position 0 (the probe's hidden states, the
prompt of a continuation), which every training sequence shows. Why not one clip per
sequence: the demo's clips are 40 codes (2 s) against a 512-code context, so the positions
past a clip's length would never be trained, and continuing a prompt beyond 2 s (the
vocoder's ``generate``) would run on untrained position embeddings; packing also leaves no
padding. Clips are drawn with probability proportional to their length, so every code is
equally likely to be a target. The target after a clip's last code is the next BOS (the
model learns where clips end; sampling never emits it).

Validation scores every code of every val clip once, exactly as ``CodeLM.perplexity`` does
(``tokenlm.lm.code_lm.scoring_windows``), so the logged val perplexity, metrics.json and the
benchmark's figure are one number, comparable with the unigram/bigram references.

Tokens of several codes per patch (``tokenizer.levels`` / ``groups``) train one position per
patch that reads the sum of its levels' embeddings and predicts every level of the next patch,
one head per level (``tokenlm.lm.multilevel``, which says why not the delay pattern); their
perplexity is per code (every level's), and the count references are the first level's.

``lm.objective`` chooses what is learnt (tokenlm.lm.objectives): ``next`` (the above), ``multi``
(also codes t+2..t+n; validation judges the next-code head) or ``masked`` (masked spans,
bidirectional; its metrics.json has masked-code loss and accuracy instead of perplexity).

Several processes: ``torchrun --nproc_per_node=N -m tokenlm pretrain RUN``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
from pathlib import Path

import click
import numpy as np
import torch

from tokenlm.core.config import build, to_dict
from tokenlm.core.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.core.fileio import write_json
from tokenlm.data.store import RaggedSplit, bin_file, sample_clips
from tokenlm.lm import multilevel
from tokenlm.lm.code_lm import IGNORE, count_baselines, lm_loss, pad_batch, scoring_windows
from tokenlm.lm.objectives import (
    AheadHeads,
    MaskedSpans,
    masked_loss,
    masked_scores,
    masked_validation_batches,
    multi_loss,
)
from tokenlm.models.code_embeddings import codebook_centroids, init_from_centroids
from tokenlm.models.gpt import LMConfig, build_gpt2, vocab_layout
from tokenlm.pipeline.registry import RunContext
from tokenlm.run.artifacts import Stage, stage_key
from tokenlm.run.rundir import METRICS, SPLITS, STAGE_FILE, TRAIN_LOG, RunDir, TokensMeta, as_run, read_tokens_meta
from tokenlm.training import TrainConfig, distributed_stage, train
from tokenlm.training.clip_starts import ClipStarts

# The LM's training defaults where they differ from TrainConfig's generic ones.
LM_TRAINING_DEFAULTS = {"steps": 2000, "batch_size": 8, "lr": 1e-3, "warmup_steps": 100, "eval_every": 100,
                        "patience": 5, "log_every": 10}

# Validation, the final val/test scores and the count references read a seeded sample of
# their split's clips of at most this many codes (every clip below it: 14 h at 20 codes/s),
# so their cost and memory stop growing with the corpus; metrics.json records the sizes.
EVAL_CODES = 1_000_000


def lm_configs(section: dict | None = None, overrides: dict | None = None) -> tuple[LMConfig, TrainConfig]:
    """(LMConfig, TrainConfig) from a recipe's ``lm:`` section (model keys at the top,
    training keys under ``training:``) and flat command-line overrides (either kind)."""
    section = dict(section or {})
    training = section.pop("training", None) or {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    model_names = {f.name for f in dataclasses.fields(LMConfig)}
    model = build(LMConfig, section, {k: v for k, v in overrides.items() if k in model_names}, where="lm")
    train_cfg = build(TrainConfig, LM_TRAINING_DEFAULTS, training,
                      {k: v for k, v in overrides.items() if k not in model_names}, where="lm.training")
    return model, train_cfg


class PackedClips:
    """Training batches of packed, clip-aligned sequences (module docstring), drawn from a
    numpy Generator only, so a batch is a pure function of (seed, rank, step): see tokenlm.training.
    Returns (input_ids (B, context), labels (B, context)); nothing is padded."""

    def __init__(self, split: RaggedSplit, bos: int, context: int):
        self.data = split.data
        self.bos = bos
        self.context = context
        self.offsets = np.asarray(split.offsets)
        self.lengths = np.asarray(split.lengths)
        self.ends = np.cumsum(self.lengths)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def __call__(self, rng: np.random.Generator, batch_size: int):
        rows = np.stack([self._sequence(rng) for _ in range(batch_size)])  # (B, context + 1)
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())

    def _sequence(self, rng: np.random.Generator) -> np.ndarray:
        width = self.context + 1
        parts, filled = [], 0
        while filled < width:
            clip = self.draw_clip(rng)
            n = int(self.lengths[clip])
            if filled == 0 and n + 1 > width:
                # [BOS] + clip is longer than a sequence: a random crop of it (no BOS past 0).
                start = int(rng.integers(0, n + 2 - width))
                first = self.offsets[clip] + max(start - 1, 0)
                codes = np.asarray(self.data[first:self.offsets[clip] + start + width - 1], dtype=np.int64)
                part = np.concatenate([[self.bos], codes]) if start == 0 else codes
            else:
                take = min(n, width - filled - 1)
                codes = np.asarray(self.data[self.offsets[clip]:self.offsets[clip] + take], dtype=np.int64)
                part = np.concatenate([[self.bos], codes])
            parts.append(part)
            filled += len(part)
        return np.concatenate(parts)[:width]

    def draw_clip(self, rng: np.random.Generator) -> int:
        # A uniform code position picks its clip: clips are drawn in proportion to their length.
        return int(np.searchsorted(self.ends, rng.integers(0, self.total), side="right"))


def count_targets(batch) -> int:
    """Scored codes in a batch (what tokens/s counts: padding is not work done)."""
    return int((batch[1] != IGNORE).sum())


def validation_batches(split: RaggedSplit, bos: int, context: int, batch_size: int) -> list:
    """Fixed batches that score every code of a seeded sample of the split's clips (all of
    them up to EVAL_CODES codes) once. Windows of similar length
    share a batch (little padding); the batches come in a fixed shuffled order, so that
    ``eval_batches`` (a cap on batches per evaluation) takes a fair sample, not the longest."""
    windows = [w for i in sample_clips(split.lengths, EVAL_CODES) for w in scoring_windows(split[i], bos, context)]
    windows.sort(key=lambda w: len(w[0]), reverse=True)
    batches = [pad_batch([w[0] for w in chunk], [w[1] for w in chunk], bos)
               for chunk in (windows[i:i + batch_size] for i in range(0, len(windows), batch_size))]
    order = np.random.default_rng(0).permutation(len(batches))
    return [batches[i] for i in order]


def _check_codes(split: RaggedSplit, codebook_size: int) -> None:
    if len(split.data) and int(split.data.max()) >= codebook_size:
        raise ArtifactError(f"{split.directory / bin_file(split.split)} holds code {int(split.data.max())}, but its "
                            f"meta says the vocabulary has {codebook_size} codes: the tokens are corrupt or from "
                            f"another tokenizer")


def fit_schedule_to_data(training: TrainConfig, train_codes: int, context: int) -> tuple[TrainConfig, dict]:
    """The schedule fitted to the corpus: at least one validation per pass over the train codes
    and a warmup of at most three passes. Early stopping keeps only weights it has validated;
    on a small corpus (706 one-second clips, 10k codes: 2.5 passes a step at the default batch)
    the default 100 steps between validations overfit long before the first one, and the LM
    ended above the bigram's perplexity (3.83 against 3.61). Returns the schedule and what changed."""
    per_pass = max(1, math.ceil(train_codes / (training.batch_size * context)))
    changed = {}
    if training.eval_every > per_pass:
        changed["eval_every"] = per_pass
    if training.warmup_steps > 3 * per_pass:
        changed["warmup_steps"] = 3 * per_pass
    return dataclasses.replace(training, **changed), changed


# ---- the stage ------------------------------------------------------------------------

def pretrain(run: str | Path, model: LMConfig = LMConfig(), training: TrainConfig | None = None, *,
             k: int | None = None, device: str | None = None, progress: bool = True,
             callbacks=(), out_dir: str | Path | None = None) -> Path:
    """Train the code LM of ``run`` (tokens of codebook size ``k``, default the run's current
    one) and save it to RUN/lm, or ``out_dir`` (the sweep trains one LM per codebook size).
    Resumes an interrupted run; skips when up to date. Works alone or as one rank under
    torchrun. Returns the LM's folder."""
    run = as_run(run)
    training = training or build(TrainConfig, LM_TRAINING_DEFAULTS)
    if device is not None:
        training = dataclasses.replace(training, device=device)
    tokens = read_tokens_meta(run.tokens(k), k)
    if tokens.levels > 1 and (model.objective != "next" or model.embeddings != "random"):
        raise ConfigError(f"lm.objective {model.objective} with lm.embeddings {model.embeddings} reads one code per "
                          f"patch; {tokens.directory} holds {tokens.levels} (a multi-level LM is trained with "
                          f"objective next and random embeddings)")
    training, changed = fit_schedule_to_data(
        training, len(RaggedSplit(tokens.directory, "train", "uint16", width=tokens.levels).data), model.context)
    key_training = {name: value for name, value in to_dict(training).items() if name != "device"}
    stage = Stage(Path(out_dir) if out_dir is not None else run.lm,
                  config={"model": model.key(), "training": key_training, "codebook_size": tokens.codebook_size},
                  inputs={"tokens": tokens.directory}, lock_root=run.lock_root)
    if stage.up_to_date("lm"):
        return stage.out_dir
    if changed and int(os.environ.get("RANK", "0")) == 0:
        _say("lm: a small corpus: " + ", ".join(f"{name} {value}" for name, value in changed.items()) +
             " (at least one validation per pass over the train codes)")
    with distributed_stage(stage, training.device) as (work, dist):
        job = _LMJob(read_tokens_meta(tokens.directory, k), model, training)  # as they are under the lock
        job.train(work, dist, progress, callbacks)
        if dist.is_main:
            stage.finish(extra={"metrics": job.metrics})
            _say(_summary(job.metrics) + f" -> {stage.out_dir}")
        dist.barrier()
    return stage.out_dir


@dataclasses.dataclass
class _LMJob:
    """One LM training: its codes, model and training settings; ``train`` fills ``metrics``."""

    tokens: TokensMeta
    model_cfg: LMConfig
    training: TrainConfig
    metrics: dict = dataclasses.field(default_factory=dict)

    def tokenizer_dir(self) -> str | None:
        """The folder of the tokenizer whose codes these are (named in config.json beside its
        hash): the run's own when it holds that codebook, so a copied run names its own copy;
        else the one the tokens' meta names (codes encoded with another run's tokenizer)."""
        run = RunDir(self.tokens.directory.parent.parent)  # RUN/tokens/k{K}
        own = run.codebook(self.tokens.codebook_size)
        expected = self.tokens.raw.get("tokenizer_hash")
        if expected and (own / STAGE_FILE).is_file() and stage_key(own) == expected:
            return str(run.tokenizer.resolve())
        return self.tokens.raw.get("tokenizer_dir")

    def train(self, work: Path, dist, progress: bool, callbacks) -> None:
        tokens, model_cfg, training = self.tokens, self.model_cfg, self.training
        levels = tokens.levels
        splits = {name: RaggedSplit(tokens.directory, name, "uint16", width=levels) for name in SPLITS}
        for split in splits.values():
            _check_codes(split, tokens.codebook_size)
        if len(splits["train"].data) == 0:
            raise TokenlmError(f"{tokens.directory}: the train split has no codes to learn from")
        bos = vocab_layout(tokens.codebook_size * levels)["bos_token_id"]  # level l's codes are ids l*K..
        info = {"code_rate": tokens.code_rate, "sample_rate": tokens.sample_rate,
                "samples_per_code": tokens.samples_per_code, "tokens_key": stage_key(tokens.directory),
                "tokenizer_hash": tokens.raw.get("tokenizer_hash"), "tokenizer_dir": self.tokenizer_dir(),
                **({"levels": levels} if levels > 1 else {})}
        torch.manual_seed(training.seed)  # the initial weights
        model = build_gpt2(model_cfg, tokens.codebook_size * levels, device=dist.device, info=info)
        if levels > 1:
            trained, loss_fn, train_batch, val_batches = _level_objective(model, model_cfg, splits, tokens.codebook_size,
                                                                          training.batch_size)
        else:
            if model_cfg.embeddings == "centroids":
                init_from_centroids(model, codebook_centroids(info["tokenizer_dir"], tokens.codebook_size), training.seed)
            trained, loss_fn, train_batch, val_batches = _objective(model, model_cfg, splits, bos, training.batch_size)
        code_rate = tokens.code_rate or 0.0
        val = val_batches(splits["val"]) if len(splits["val"].data) else None
        if dist.is_main:
            params = sum(p.numel() for p in model.parameters())
            shape = "" if levels == 1 else f" (patches) x {levels} levels"
            _say(f"lm: {params / 1e6:.2f} M parameters, {len(splits['train'].data)} train codes{shape}, "
                 f"K={tokens.codebook_size}, context {model_cfg.context}, {dist.world_size} process(es) on "
                 f"{dist.device} ({model.config._attn_implementation} attention, {model_cfg.objective} objective)")
        result = train(
            trained, training, work,
            loss_fn=loss_fn,
            train_batch=train_batch,
            val_batches=(lambda: val) if val else None,
            val_metrics=None if model_cfg.objective == "masked" else (
                lambda loss: {"val_ppl": math.exp(min(loss, 700.0)), "val_bits_per_s": loss / math.log(2) * code_rate * levels}),
            count_items=count_targets,
            items_name="tokens",
            dist=dist,
            progress=progress,
            callbacks=callbacks,
            desc="lm",
        )
        if dist.is_main:
            from transformers.utils import logging as hf_logging  # transformers loads lazily

            hf_logging.disable_progress_bar()  # "Writing model shards" for a one-file model is noise
            self.metrics = _final_metrics(model, result, splits, bos, self, work, dist, val_batches, loss_fn)
            model.cpu().save_pretrained(work)
            write_json(work / METRICS, self.metrics)


def _objective(model, cfg: LMConfig, splits: dict, bos: int, batch_size: int):
    """(module the loop trains, loss_fn, train batches, split -> val batches) of ``cfg.objective``
    (tokenlm.lm.objectives)."""
    packed = PackedClips(splits["train"], bos, cfg.context)
    if cfg.start_crops:  # a share of sequences made of clip openings, as the probe reads clips
        packed = ClipStarts(packed, cfg.start_crops, cfg.crop_codes)
    if cfg.objective == "masked":
        masking = {"mask_id": model.config.tokenlm["mask_token_id"], "bos": bos, "prob": cfg.mask_prob,
                   "span": cfg.mask_span}
        return (model, functools.partial(masked_loss, bos=bos), MaskedSpans(packed, **masking),
                lambda split: masked_validation_batches(_sampled(split), cfg.context, batch_size, **masking))
    batches = lambda split: validation_batches(split, bos, cfg.context, batch_size)  # noqa: E731
    if cfg.objective == "multi":
        return AheadHeads(model, cfg.predict_ahead), functools.partial(multi_loss, bos=bos), packed, batches
    return model, lm_loss, packed, batches


def _level_objective(model, cfg: LMConfig, splits: dict, size: int, batch_size: int):
    """``_objective`` for tokens of several codes per patch (tokenlm.lm.multilevel): next patch,
    every level."""
    levels = splits["train"].width
    return (model, functools.partial(multilevel.level_loss, levels=levels, size=size),
            multilevel.PackedLevels(splits["train"], size, cfg.context),
            lambda split: multilevel.validation_batches(split, size, cfg.context, batch_size))


def _final_metrics(model, result, splits, bos, job: _LMJob, work: Path, dist, val_batches, loss_fn=lm_loss) -> dict:
    """Val and test perplexity of the kept weights next to the count references (a masked-code
    LM: its masked-prediction loss and accuracy instead, perplexity does not apply)."""
    code_rate, context, batch_size = job.tokens.code_rate or 0.0, job.model_cfg.context, job.training.batch_size
    metrics = {"steps": result.step, "best_step": result.best_step, "stopped_early": result.stopped_early,
               "parameters": sum(p.numel() for p in model.parameters()),
               "train_codes": int(len(splits["train"].data)), "code_rate": code_rate,
               "objective": job.model_cfg.objective}
    masked = job.model_cfg.objective == "masked"
    if masked:
        metrics["perplexity"] = "does not apply to a masked-code LM: see *_masked_accuracy"
    for name in ("val", "test"):
        if len(splits[name].data) and masked:
            loss, accuracy = masked_scores(model, val_batches(splits[name]), bos, job.tokens.codebook_size,
                                           dist.device)
            metrics[f"{name}_masked_loss"], metrics[f"{name}_masked_accuracy"] = loss, accuracy
        elif len(splits[name].data) and job.tokens.levels > 1:
            loss = _batches_loss(model, val_batches(splits[name]), loss_fn, dist.device)
            metrics[f"{name}_loss"] = loss
            metrics[f"{name}_ppl"] = math.exp(loss)  # per code, every level's
            metrics[f"{name}_bits_per_s"] = loss / math.log(2) * code_rate * job.tokens.levels
        elif len(splits[name].data):
            loss = _split_loss(model, splits[name], bos, context, batch_size, dist.device)
            metrics[f"{name}_loss"] = loss
            metrics[f"{name}_ppl"] = math.exp(loss)
            metrics[f"{name}_bits_per_s"] = loss / math.log(2) * code_rate
    ref_split = splits["val"] if len(splits["val"].data) else splits["test"]
    first = (lambda c: c[:, 0]) if job.tokens.levels > 1 else (lambda c: c)  # the references' codes: level 1's
    refs = count_baselines((first(c) for c in _sampled(splits["train"])), (first(c) for c in _sampled(ref_split)),
                           job.tokens.codebook_size)
    metrics["unigram_ppl"], metrics["bigram_ppl"] = refs["unigram_ppl"], refs["bigram_ppl"]
    metrics["reference_split"] = ref_split.split
    metrics["eval_sample"] = {name: int(split.lengths[sample_clips(split.lengths, EVAL_CODES)].sum())
                              for name, split in splits.items()}  # codes scored (val, test) or counted (train)
    metrics["tokens_per_s"] = _mean_rate(work / TRAIN_LOG)
    return metrics


@torch.no_grad()
def _batches_loss(model, batches, loss_fn, device) -> float:
    """Mean loss per scored code over fixed ``batches`` (each weighted by its codes)."""
    model.eval()
    total, count = 0.0, 0
    for ids, labels in batches:
        loss, n = loss_fn(model, (ids.to(device), labels.to(device)))
        total += float(loss) * n
        count += n
    return total / count


@torch.no_grad()
def _split_loss(model, split, bos, context, batch_size, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in validation_batches(split, bos, context, batch_size):
        loss, n = lm_loss(model, (batch[0].to(device), batch[1].to(device)))
        total += float(loss) * n
        count += n
    return total / count


def _sampled(split: RaggedSplit):
    """The clips of the split's bounded evaluation sample (``sample_clips``), in order."""
    return (split[i] for i in sample_clips(split.lengths, EVAL_CODES))


def _summary(metrics: dict) -> str:
    if metrics["objective"] == "masked":
        return f"lm: val masked-code accuracy {metrics.get('val_masked_accuracy', float('nan')):.3f}"
    return (f"lm: val perplexity {metrics.get('val_ppl', float('nan')):.2f} "
            f"(unigram {metrics['unigram_ppl']:.2f}, bigram {metrics['bigram_ppl']:.2f})")


def _mean_rate(log_path: Path) -> float | None:
    if not log_path.is_file():
        return None
    with open(log_path, newline="") as f:
        rates = [float(r["tokens_per_s"]) for r in csv.DictReader(f) if r.get("tokens_per_s")]
    return sum(rates) / len(rates) if rates else None


def _say(message: str) -> None:
    click.echo(message, err=True)


def run(ctx: RunContext) -> None:
    pretrain_from_context(ctx)


def pretrain_from_context(ctx: RunContext, codebook_size: int | None = None, overrides: dict | None = None) -> Path:
    model, training = lm_configs(ctx.section("lm"), overrides)
    return pretrain(ctx.run, model, training, k=codebook_size, device=ctx.device, progress=ctx.progress)
