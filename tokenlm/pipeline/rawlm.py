"""Next-sample prediction on raw audio: a causal transformer against a WaveNet of about the
same parameter count, and the transformer given the run's codes as wider context (Verma &
Chafe, DAFx 2021).

    tokenlm rawlm RUN [--models transformer,wavenet,transformer+codes] [--context-ms 64]

Every model reads the same windows of ``context_ms`` of 8-bit mu-law audio, cut at code
boundaries from the run's tokenized clips (RUN/tokens/k{K}: the train split of the
pretraining audio to learn from, val and test to score) and predicts each sample as a
256-way classification. Only the window's last half is scored, so every scored sample has at
least half a window of past (the WaveNet's receptive field should fit in it; the report
says when it does not). ``transformer+codes`` also reads the ``prefix_codes`` codes before the
window (``tokenlm.models.sample_transformer``). All train on the shared loop with the same
steps, batches and seed.

Writes RUN/rawlm/results.json (per model: bits per sample, top-1 and top-5 accuracy on val
and test, parameters, FLOPs per sample, training time and throughput), report.md, and
RUN/rawlm/samples/: a prompt from a test clip and each model's continuation of it. Nothing
happens in ``tokenlm run`` unless the recipe has a ``rawlm:`` section.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tokenlm.core.config import to_dict
from tokenlm.core.errors import TokenlmError
from tokenlm.core.fileio import write_json
from tokenlm.core.runtime import pick_device, seed_everything
from tokenlm.data.store import RaggedSplit
from tokenlm.models.sample_transformer import SampleTransformer, SampleTransformerConfig, matched_width
from tokenlm.models.wavenet import WaveNet, WaveNetConfig, mu_law_decode
from tokenlm.pipeline.registry import RunContext
from tokenlm.run.artifacts import Stage
from tokenlm.run.rundir import REPORT, RESULTS, SAMPLES, RunDir, as_run, read_tokens_meta
from tokenlm.training import DistContext, TrainConfig, checkpoint_folder, to_device, train
from tokenlm.vocoder.training_data import AlignedAudio, spread
from tokenlm.vocoder.vocoder import write_wav

SECTION = "rawlm"




MODELS = ("transformer", "wavenet", "transformer+codes")


SPLITS_SCORED = ("val", "test")


@dataclass(frozen=True)
class RawLMConfig:
    """The ``rawlm:`` recipe section."""

    models: tuple[str, ...] = MODELS
    context_ms: float = 64.0  # the window every model reads; its last half is scored
    prefix_codes: int = 8  # transformer+codes: codes before the window it reads
    # WaveNet (unconditioned; dilations 1..2**(layers_per_cycle-1), ``cycles`` times)
    layers_per_cycle: int = 8
    cycles: int = 1
    residual_channels: int = 32
    gate_channels: int = 64
    skip_channels: int = 64
    # transformer; d_model 0: the width whose parameter count matches the WaveNet's
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 0
    # training, the same for every model
    steps: int = 200
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 20
    eval_every: int = 50
    eval_windows: int = 32  # fixed windows per scored split (and validation)
    generate_seconds: float = 0.25  # audio each model continues a test prompt by
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "models", parse_models(self.models))
        if self.context_ms <= 0 or self.generate_seconds < 0 or self.eval_windows < 1:
            raise ValueError("context_ms must be positive, generate_seconds >= 0, eval_windows >= 1")


def parse_models(value) -> tuple[str, ...]:
    names = [n.strip().lower() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        raise ValueError(f"unknown model(s) {', '.join(unknown) or '(none given)'} (known: {', '.join(MODELS)})")
    return tuple(dict.fromkeys(names))


class Windows:
    """Windows of ``length`` samples starting on a code boundary, with the ``prefix`` codes
    before each (``pad`` where the clip has not started)."""

    def __init__(self, data: AlignedAudio, length: int, prefix: int, pad: int):
        self.data, self.length, self.prefix, self.pad = data, length, prefix, pad
        starts = (data.lengths * data.spc - length) // data.spc + 1  # code-aligned starts per clip
        self.clips = np.flatnonzero(starts > 0)
        if not len(self.clips):
            raise TokenlmError(f"no clip holds a window of {length} samples: lower rawlm.context_ms")
        self.ends = np.cumsum(starts[self.clips])

    def __call__(self, rng: np.random.Generator, batch_size: int):
        picks = rng.integers(0, int(self.ends[-1]), size=batch_size)
        return self.batch([self._window(int(p)) for p in picks])

    def fixed(self, n: int) -> list[tuple[int, int]]:
        """``n`` windows spread evenly over all windows (the same every call)."""
        return [self._window(p) for p in spread(int(self.ends[-1]), n)]

    def _window(self, pick: int) -> tuple[int, int]:
        which = int(np.searchsorted(self.ends, pick, side="right"))
        return int(self.clips[which]), pick - (int(self.ends[which - 1]) if which else 0)

    def batch(self, windows: list[tuple[int, int]]):
        """(audio (B, length), prefix codes (B, prefix)) LongTensors."""
        data, audio, prefixes = self.data, [], []
        for clip, start in windows:
            first = int(data.offsets[clip]) + start
            audio.append(data.audio[first * data.spc: first * data.spc + self.length])
            codes = data.codes[first - min(start, self.prefix): first]
            prefixes.append(np.concatenate([np.full(self.prefix - len(codes), self.pad), codes]))
        return (torch.from_numpy(np.stack(audio).astype(np.int64)),
                torch.from_numpy(np.stack(prefixes).astype(np.int64)))


def logits_of(model, batch):
    audio, prefix = batch
    if isinstance(model, SampleTransformer) and model.config.conditioned:
        return model(audio, prefix)
    return model(audio)


def scored_loss(model, batch):
    """Mean cross-entropy (nats) over the window's last half, and the samples scored."""
    half = batch[0].shape[1] // 2
    logits = logits_of(model, batch)[:, :, half:]
    return F.cross_entropy(logits.float(), batch[0][:, half:]), batch[0][:, half:].numel()


@torch.no_grad()
def scores(model, batches, device) -> dict:
    """Bits per sample, top-1 and top-5 accuracy over the scored halves of ``batches``."""
    model.eval()
    nll = top1 = top5 = count = 0.0
    for batch in batches:
        batch = to_device(batch, device)
        half = batch[0].shape[1] // 2
        logits, target = logits_of(model, batch)[:, :, half:].float(), batch[0][:, half:]
        nll += float(F.cross_entropy(logits, target, reduction="sum"))
        best5 = logits.topk(5, dim=1).indices  # (B, 5, T)
        top1 += float((best5[:, 0] == target).sum())
        top5 += float((best5 == target[:, None]).any(1).sum())
        count += target.numel()
    return {"bits_per_sample": nll / count / math.log(2), "top1": top1 / count, "top5": top5 / count,
            "samples": int(count)}


def flops_per_sample(model, batch) -> float:
    """Forward FLOPs of one window (torch's FlopCounterMode) over its length."""
    one = tuple(t[:1] for t in batch)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits_of(model, one)
    return counter.get_total_flops() / one[0].shape[1]


def rawlm(run: str | Path | RunDir, config: RawLMConfig = RawLMConfig(), *, device: str | None = None,
          progress: bool = True) -> Path:
    """Train and score every model of ``config.models`` on the run's tokenized audio; RUN/rawlm."""
    run = as_run(run)
    tokens = read_tokens_meta(run.tokens()).require("sample_rate", "samples_per_code")
    tokens.require_single_level("rawlm's code-conditioned models")
    stage = Stage(run.rawlm, config=to_dict(config), inputs={"tokens": tokens.directory}, lock_root=run.lock_root)

    def make(work: Path) -> dict:
        torch_device = pick_device(device)
        seed_everything(config.seed)
        length = max(2, round(config.context_ms * tokens.sample_rate / 1000))
        splits = {s: _windows(run, tokens, s, length, config, progress) for s in ("train", *SPLITS_SCORED)}
        fixed = {s: splits[s].batch(splits[s].fixed(config.eval_windows)) for s in SPLITS_SCORED}
        val = [tuple(t[i:i + config.batch_size] for t in fixed["val"])
               for i in range(0, config.eval_windows, config.batch_size)]
        wavenet_config = WaveNetConfig(layers_per_cycle=config.layers_per_cycle, cycles=config.cycles,
                                       residual_channels=config.residual_channels, gate_channels=config.gate_channels,
                                       skip_channels=config.skip_channels, codebook_size=0,
                                       samples_per_code=tokens.samples_per_code, sample_rate=tokens.sample_rate)
        results = {"context_samples": length, "scored_samples_per_window": length - length // 2,
                   "sample_rate": tokens.sample_rate, "codebook_size": tokens.codebook_size,
                   "samples_per_code": tokens.samples_per_code, "wavenet_receptive_field":
                   wavenet_config.receptive_field, "models": {}}
        prompt = tuple(t[:1] for t in fixed["test"])
        write_wav(work / SAMPLES / "prompt.wav", mu_law_decode(prompt[0][0]).numpy(), tokens.sample_rate)
        for name in config.models:
            torch.manual_seed(config.seed)  # the same initial draw for every model
            model = _build(name, config, wavenet_config, length, tokens.codebook_size)
            _say(f"rawlm {name}: {_params(model):,} parameters, windows of {length} samples")
            result = _train(name, model, config, splits["train"], val, work, torch_device, progress)
            model = model.to(torch_device)
            for split in SPLITS_SCORED:
                batches = [tuple(t[i:i + config.batch_size] for t in fixed[split])
                           for i in range(0, config.eval_windows, config.batch_size)]
                result[split] = scores(model, batches, torch_device)
            model = model.cpu()
            result["flops_per_sample"] = flops_per_sample(model, fixed["test"])
            # forward + backward ~ 3 forwards: what the training throughput does in FLOP/s
            result["train_flops_per_s"] = 3 * result["flops_per_sample"] * result["train_samples_per_s"]
            _generate(name, model, prompt, round(config.generate_seconds * tokens.sample_rate), tokens.sample_rate,
                      work / SAMPLES / f"{name.replace('+', '_')}.wav", config.seed)
            results["models"][name] = result
            _say(f"rawlm {name}: test {result['test']['bits_per_sample']:.3f} bits/sample, "
                 f"top-1 {result['test']['top1']:.3f}, top-5 {result['test']['top5']:.3f}")
        write_json(work / RESULTS, results)
        (work / REPORT).write_text(render(results))
        return {"models": list(results["models"])}

    return stage.build("rawlm", make)


def _windows(run: RunDir, tokens, split: str, length: int, config: RawLMConfig, progress: bool) -> Windows:
    ragged = RaggedSplit(tokens.directory, split, "uint16")
    if not len(ragged):
        raise TokenlmError(f"the run's {split} split has no clip: rawlm needs train, val and test audio")
    data = AlignedAudio.load(run, ragged, range(len(ragged)), tokens.sample_rate, tokens.samples_per_code,
                             256, progress)
    return Windows(data, length, config.prefix_codes, pad=tokens.codebook_size)


def _build(name: str, config: RawLMConfig, wavenet_config: WaveNetConfig, length: int, codebook_size: int):
    wavenet = WaveNet(wavenet_config)
    if name == "wavenet":
        return wavenet
    transformer = SampleTransformerConfig(d_model=config.d_model or config.n_head, n_layer=config.n_layer,
                                          n_head=config.n_head, context=length, prefix_codes=config.prefix_codes,
                                          codebook_size=codebook_size if name == "transformer+codes" else 0)
    if not config.d_model:
        transformer = matched_width(replace(transformer, codebook_size=0), _params(wavenet))
        transformer = replace(transformer, codebook_size=codebook_size if name == "transformer+codes" else 0)
    return SampleTransformer(transformer)


def _train(name, model, config: RawLMConfig, windows: Windows, val, work: Path, device, progress) -> dict:
    loop = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                       warmup_steps=min(config.warmup_steps, config.steps - 1), weight_decay=0.01,
                       eval_every=config.eval_every, seed=config.seed)
    started = time.perf_counter()
    with checkpoint_folder(work / "training" / name.replace("+", "_")) as folder:
        result = train(model, loop, folder, loss_fn=scored_loss, train_batch=windows, val_batches=lambda: val,
                       val_metrics=lambda loss: {"val_bits_per_sample": loss / math.log(2)},
                       count_items=lambda batch: batch[0].numel(), items_name="samples",
                       dist=DistContext.single(device), progress=progress, desc=f"rawlm {name}")
    seconds = result.elapsed_s or time.perf_counter() - started
    return {"parameters": _params(model), "config": to_dict(model.config), "train_seconds": seconds,
            "train_samples_per_s": config.steps * config.batch_size * windows.length / max(seconds, 1e-9),
            "best_step": result.best_step, "history": result.history}


def _generate(name, model, prompt, n_samples: int, sample_rate: int, path: Path, seed: int) -> None:
    if n_samples < 1:
        return
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    audio, prefix = prompt
    if isinstance(model, WaveNet):
        out = model.generate(n_samples=audio.shape[1] + n_samples, prompt_q=audio, generator=generator)
        out = out[:, audio.shape[1]:]
    else:
        q = model.generate(audio, n_samples, prefix if model.config.conditioned else None, generator=generator)
        out = mu_law_decode(q)
    write_wav(path, out[0].numpy(), sample_rate)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def render(results: dict) -> str:
    """report.md: one row per model."""
    rate = results["sample_rate"]
    lines = ["# Raw-audio next-sample prediction", "",
             f"Windows of {results['context_samples']} samples ({1000 * results['context_samples'] / rate:.0f} ms "
             f"at {rate} Hz), the last {results['scored_samples_per_window']} scored; 8-bit mu-law, 256 classes. "
             f"WaveNet receptive field: {results['wavenet_receptive_field']} samples"
             + (" (longer than the scored samples' past: it is cut at the window start)."
                if results["wavenet_receptive_field"] > results["context_samples"] // 2 else "."),
             "",
             "| model | params | test bits/sample | test top-1 | test top-5 | val bits/sample | val top-1 | val top-5 "
             "| kFLOPs / sample | train (s) | train samples/s | train GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        test, val = r["test"], r["val"]
        lines.append(f"| {name} | {r['parameters']:,} | {test['bits_per_sample']:.3f} | {100 * test['top1']:.1f}% | "
                     f"{100 * test['top5']:.1f}% | {val['bits_per_sample']:.3f} | {100 * val['top1']:.1f}% | "
                     f"{100 * val['top5']:.1f}% | {r['flops_per_sample'] / 1e3:,.0f} | {r['train_seconds']:.0f} | "
                     f"{r['train_samples_per_s']:,.0f} | {r['train_flops_per_s'] / 1e9:.2f} |")
    lines += ["", "transformer+codes also reads the tokenizer's codes of the patches before the window (prefix "
              "tokens), never those of the window itself. Samples: `samples/` (prompt.wav, then each model's "
              "continuation of it).", ""]
    return "\n".join(lines)


def _say(text: str) -> None:
    click.echo(text, err=True)


def rawlm_config(ctx: RunContext, overrides: dict | None = None) -> RawLMConfig:
    return ctx.config(RawLMConfig, SECTION, overrides)


def run(ctx: RunContext) -> None:
    """``tokenlm run``: only when the recipe has a ``rawlm:`` section."""
    if ctx.section(SECTION):
        rawlm(ctx.run, rawlm_config(ctx), device=ctx.device, progress=ctx.progress)
