"""The code LM over several codes per patch (residual levels or product groups,
``tokenlm.tokenizer.quantizers``): one position per patch, reading the patch as the sum of its levels'
embeddings and predicting every level of the next patch, one head per level.

Ids. The saved model stays a plain ``GPT2LMHeadModel``: level l's code c is id ``l * K + c``,
BOS is id ``L * K`` (``vocab_layout(L * K)``), and the ``tokenlm`` section of its config says
``levels: L`` (``codebook_size`` there is the L * K code ids; ``CodeLM.codebook_size`` is K).
A position's input embedding is the sum of its L ids' rows of the (tied) embedding table, a
BOS position's is L times BOS's row. Level l's head is the output layer's rows of level l's
ids plus BOS's (a softmax over K + 1: its codes, or "the clip ends"), so each level has its
own head, tied to its own embeddings, at no extra parameters.

Why parallel heads, not MusicGen's delay pattern: the probe reads the hidden state of a patch,
and with parallel heads the state at patch t has read every level of patches <= t, aligned
with the audio; under the delay pattern level l of patch t enters l positions later, so no
single position holds a whole patch. The price is that a patch's levels are predicted
independently given the past (sampling draws them independently too); residual levels are
coarse-to-fine, so the first level, which carries most of the information, loses nothing.

Codes are handled as (T, L) int64 arrays of level-local codes in [0, K); local code K (BOS)
stands for a clip start in a training sequence (and its labels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tokenlm.lm.windows import plan_windows

IGNORE = -100  # tokenlm.lm.code_lm.IGNORE (not imported: tokenlm.lm.code_lm imports this module)


def to_ids(local: np.ndarray | torch.Tensor, size: int):
    """Level-local codes (..., L) in [0, K] (K = BOS) -> model ids: l * K + c, BOS -> L * K."""
    levels = local.shape[-1]
    if isinstance(local, torch.Tensor):
        offsets = torch.arange(levels, device=local.device) * size
        return torch.where(local == size, torch.full_like(local, levels * size), local + offsets)
    local = np.asarray(local, dtype=np.int64)
    return np.where(local == size, levels * size, local + np.arange(levels) * size)


def level_logits(logits: torch.Tensor, levels: int, size: int) -> torch.Tensor:
    """Output logits (..., V) -> each level's head (..., L, K + 1): its K codes, then BOS."""
    index = torch.arange(levels * size, device=logits.device).reshape(levels, size)
    index = torch.cat([index, torch.full((levels, 1), levels * size, device=logits.device)], dim=1)  # (L, K+1)
    return logits[..., index]


def embed(model, ids: torch.Tensor) -> torch.Tensor:
    """Ids (B, T, L) -> input embeddings (B, T, d): the sum of a position's levels' rows."""
    return model.transformer.wte(ids).sum(dim=-2)


def forward(model, ids: torch.Tensor, **kwargs):
    """The GPT-2 forward on multi-level ids (B, T, L) (position embeddings are added inside)."""
    return model(inputs_embeds=embed(model, ids), **kwargs)


def level_loss(model, batch, *, levels: int, size: int) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy per code (nats) over every level of the scored positions, and the
    number of codes scored. ``batch``: ids (B, T, L), local labels (B, T, L)."""
    ids, labels = batch
    logits = level_logits(forward(model, ids, use_cache=False).logits.float(), levels, size)  # (B, T, L, K+1)
    count = int((labels != IGNORE).sum())
    loss = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), ignore_index=IGNORE)
    return loss, count


def scoring_windows(clip: np.ndarray, size: int, context: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids (T, L), local labels (T, L)) windows scoring every patch of a clip (T, L) once;
    tokenlm.lm.code_lm.scoring_windows with rows of levels for codes."""
    clip = np.asarray(clip, dtype=np.int64)
    seq = np.concatenate([np.full((1, clip.shape[1]), size), clip])  # (n + 1, L), local
    out = []
    for start, end, emit_from in plan_windows(len(clip), context):
        labels = seq[start + 1:end + 1].copy()
        labels[: emit_from - start] = IGNORE
        out.append((to_ids(seq[start:end], size), labels))
    return out


def pad(inputs: list[np.ndarray], labels: list[np.ndarray] | None, bos: int):
    """Right-pad (T_i, L) arrays to (B, T, L) LongTensors: ids with BOS, labels with IGNORE."""
    width = max((len(x) for x in inputs), default=0)
    levels = inputs[0].shape[1] if inputs else 1
    ids = torch.full((len(inputs), width, levels), bos, dtype=torch.long)
    lab = torch.full((len(inputs), width, levels), IGNORE, dtype=torch.long) if labels is not None else None
    for i, x in enumerate(inputs):
        ids[i, :len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
        if lab is not None:
            lab[i, :len(x)] = torch.as_tensor(np.asarray(labels[i], dtype=np.int64))
    return ids, lab


def validation_batches(split, size: int, context: int, batch_size: int) -> list:
    """tokenlm.pipeline.pretrain.validation_batches for (T, L) clips."""
    levels = split.width
    windows = [w for _, clip in split for w in scoring_windows(clip, size, context)]
    windows.sort(key=lambda w: len(w[0]), reverse=True)
    batches = [pad([w[0] for w in chunk], [w[1] for w in chunk], levels * size)
               for chunk in (windows[i:i + batch_size] for i in range(0, len(windows), batch_size))]
    order = np.random.default_rng(0).permutation(len(batches))
    return [batches[i] for i in order]


class PackedLevels:
    """tokenlm.pipeline.pretrain.PackedClips for (T, L) clips: packed clip-aligned sequences,
    each clip behind a BOS row, drawn the same way; (ids (B, context, L), labels (B, context, L))."""

    def __init__(self, split, size: int, context: int):
        self.data, self.size, self.context = split.data, size, context
        self.levels = split.width
        self.offsets = np.array([r["offset"] for r in split.rows], dtype=np.int64)
        self.lengths = np.array([r["length"] for r in split.rows], dtype=np.int64)
        self.ends = np.cumsum(self.lengths)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def __call__(self, rng: np.random.Generator, batch_size: int):
        rows = np.stack([self._sequence(rng) for _ in range(batch_size)])  # (B, context + 1, L) local
        return torch.from_numpy(to_ids(rows[:, :-1], self.size)), torch.from_numpy(rows[:, 1:].copy())

    def _sequence(self, rng: np.random.Generator) -> np.ndarray:
        width, bos = self.context + 1, np.full((1, self.levels), self.size)
        parts, filled = [], 0
        while filled < width:
            clip = int(np.searchsorted(self.ends, rng.integers(0, self.total), side="right"))
            n, first = int(self.lengths[clip]), int(self.offsets[clip])
            if filled == 0 and n + 1 > width:  # a random crop of a long clip (no BOS past 0)
                start = int(rng.integers(0, n + 2 - width))
                codes = np.asarray(self.data[first + max(start - 1, 0):first + start + width - 1], dtype=np.int64)
                part = np.concatenate([bos, codes]) if start == 0 else codes
            else:
                take = min(n, width - filled - 1)
                part = np.concatenate([bos, np.asarray(self.data[first:first + take], dtype=np.int64)])
            parts.append(part)
            filled += len(part)
        return np.concatenate(parts)[:width]


# ---- what CodeLM does with a multi-level model ----------------------------------------------

def sample_levels(logits: torch.Tensor, temperature: float, top_k: int, generator) -> list[int]:
    """One patch's codes from its level heads (L, K + 1): BOS is never sampled."""
    logits = logits.float()[:, :-1]
    if temperature <= 0:
        return [int(c) for c in logits.argmax(dim=-1)]
    logits = logits / temperature
    if top_k and top_k < logits.shape[1]:
        threshold = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return [int(c) for c in torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]]


def generate(lm, prompt: np.ndarray, n: int, temperature: float, top_k: int, seed: int,
             use_cache: bool) -> torch.LongTensor:
    """CodeLM.generate for a multi-level LM: (n, L) new codes; the same window, cache and
    sliding rules, one patch (all its levels) per step."""
    size, levels = lm.codebook_size, lm.levels
    generator = torch.Generator(device=lm.device).manual_seed(int(seed))
    bos_row = [levels * size] * levels
    window = [bos_row, *to_ids(prompt, size).tolist()][-lm.context:]
    keep = lm.context // 2
    cache, pending, new = None, list(window), []
    for _ in range(n):
        if len(window) > lm.context:
            window = window[-keep:]
            cache, pending = None, list(window)
        if use_cache:
            if cache is None:
                from transformers import DynamicCache

                cache = DynamicCache(config=lm.model.config)
            out = forward(lm.model, torch.tensor([pending], device=lm.device), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        else:
            out = forward(lm.model, torch.tensor([window], device=lm.device), use_cache=False)
        codes = sample_levels(level_logits(out.logits[0, -1], levels, size), temperature, top_k, generator)
        new.append(codes)
        row = to_ids(np.array(codes), size).tolist()
        window.append(row)
        pending = [row]
    return torch.tensor(new, dtype=torch.long).reshape(n, levels)


def log_likelihood(lm, clips: list[np.ndarray], batch_size: int) -> list[torch.Tensor]:
    """Per clip, each patch's log-probability (T,): the sum over its levels' heads."""
    size, levels = lm.codebook_size, lm.levels
    out = [torch.zeros(len(c)) for c in clips]
    jobs = []
    for i, clip in enumerate(clips):
        for (inputs, labels), (a, _, emit) in zip(scoring_windows(clip, size, lm.context),
                                                 plan_windows(len(clip), lm.context)):
            jobs.append((i, a, emit, inputs, labels))
    jobs.sort(key=lambda job: len(job[3]), reverse=True)  # similar lengths share a batch
    for batch in (jobs[s:s + batch_size] for s in range(0, len(jobs), batch_size)):
        ids, labels = pad([j[3] for j in batch], [j[4] for j in batch], levels * size)
        logits = level_logits(forward(lm.model, ids.to(lm.device), use_cache=False).logits.float(), levels, size)
        picked = torch.log_softmax(logits, dim=-1).cpu().gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        for row, (i, a, emit, inputs, _) in enumerate(batch):
            q0, q1 = emit - a, len(inputs)
            out[i][a + q0:a + q1] = picked[row, q0:q1].sum(dim=-1)
    return out


def perplexity_per_code(logps: list[torch.Tensor], levels: int) -> float:
    """exp(mean negative log-likelihood per code), a patch being ``levels`` codes."""
    n = sum(len(x) for x in logps) * levels
    return math.exp(-float(sum(x.double().sum() for x in logps)) / n) if n else float("nan")
