"""Using a trained code LM: hidden states per layer, likelihoods, generation (``CodeLM``),
and the pieces the training stage shares with it so that training's validation loss and
``CodeLM.perplexity`` are one and the same number.

How a clip is shown to the model: ``[BOS, c0, c1, ..., c_{n-1}]`` from position 0, as every
training sequence starts. The code at clip position t sits at sequence position t+1 and its
hidden state has seen BOS and c0..ct, nothing of other clips.

Clips longer than the context are read with **sliding windows of half-context overlap**:
the first window is the clip's start (with BOS); each later window is a full context
ending ``hop = context - context // 2`` positions further, and contributes only its last
``hop`` positions, so every position keeps at least ``context // 2`` positions of left
context. Training crops long clips at random offsets (without BOS), so windows that start
mid-clip are in-distribution.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.runtime import pick_device
from tokenlm.lm import multilevel
from tokenlm.lm.windows import plan_windows
from tokenlm.models.gpt import resolve_attn_implementation, same_clip_mask, with_causal_lm_loss
from tokenlm.run.artifacts import check_outputs
from tokenlm.run.rundir import CONFIG

__all__ = [
    "CodeLM",
    "plan_windows",
    "scoring_windows",
    "pad_batch",
    "lm_loss",
    "count_baselines",
    "IGNORE",
]

IGNORE = -100  # label of positions that are not scored (padding, context-only positions)


# ---- sequences shared by training, validation and CodeLM ----------------------------------

def scoring_windows(clip: np.ndarray, bos: int, context: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) windows that score every code of a clip exactly once: code t is
    predicted from BOS and c0..c_{t-1}. Labels are IGNORE on context-only positions."""
    seq = np.concatenate([[bos], np.asarray(clip, dtype=np.int64)])  # (n+1,)
    n = len(seq) - 1
    out = []
    # Position p (0..n-1) predicts seq[p+1]; positions are the first n of seq.
    for start, end, emit_from in plan_windows(n, context):
        inputs = seq[start:end]
        labels = seq[start + 1:end + 1].copy()
        labels[: emit_from - start] = IGNORE
        out.append((inputs, labels))
    return out


def pad_batch(inputs: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None, pad_id: int):
    """Right-pad to the longest: (input_ids (B, T), labels (B, T) or None) LongTensors.

    Right padding needs no attention mask under a causal model: real positions never look
    ahead at the padding, and padded positions are never scored."""
    width = max((len(x) for x in inputs), default=0)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    lab = torch.full((len(inputs), width), IGNORE, dtype=torch.long) if labels is not None else None
    for i, x in enumerate(inputs):
        ids[i, : len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
        if lab is not None:
            lab[i, : len(x)] = torch.as_tensor(np.asarray(labels[i], dtype=np.int64))
    return ids, lab


def lm_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Mean next-code cross-entropy (nats) over the scored positions, and their number.
    ``batch`` is (input_ids (B, T), labels (B, T)) with labels already aligned to outputs."""
    input_ids, labels = batch
    logits = model(input_ids=input_ids, use_cache=False).logits  # (B, T, V)
    count = int((labels != IGNORE).sum())
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    return loss, count


def count_baselines(train_clips: Iterable[np.ndarray], val_clips: Iterable[np.ndarray], codebook_size: int) -> dict:
    """Perplexity per code on ``val_clips`` of a unigram and a bigram model counted on
    ``train_clips`` with add-one smoothing; the bigram conditions a clip's first code on BOS.
    The same targets as ``CodeLM.perplexity``: every code of every val clip."""
    k = codebook_size
    unigram = np.ones(k, dtype=np.float64)
    bigram = np.ones((k + 1) * k, dtype=np.float64)  # (previous, next); previous k = BOS
    for prev, cur in _pair_chunks(train_clips, k):
        unigram += np.bincount(cur, minlength=k)
        bigram += np.bincount(prev * k + cur, minlength=(k + 1) * k)
    log_uni = np.log(unigram / unigram.sum())
    bigram = bigram.reshape(k + 1, k)
    log_bi = np.log(bigram / bigram.sum(axis=1, keepdims=True))
    nll_uni = nll_bi = 0.0
    n = 0
    for prev, cur in _pair_chunks(val_clips, k):
        nll_uni -= log_uni[cur].sum()
        nll_bi -= log_bi[prev, cur].sum()
        n += len(cur)
    if n == 0:
        return {"unigram_ppl": float("nan"), "bigram_ppl": float("nan"), "n_codes": 0}
    return {"unigram_ppl": math.exp(nll_uni / n), "bigram_ppl": math.exp(nll_bi / n), "n_codes": n}


def _pair_chunks(clips: Iterable[np.ndarray], k: int, chunk: int = 1 << 20):
    """(previous, current) code arrays, a clip's first code preceded by BOS (= k), gathered
    into chunks of about ``chunk`` codes so that counting is one bincount per chunk."""
    prevs, curs, size = [], [], 0
    for clip in clips:
        cur = np.asarray(clip, dtype=np.int64)
        if not len(cur):
            continue
        if cur.min() < 0 or cur.max() >= k:
            raise ArtifactError(f"codes out of range for a {k}-code vocabulary: [{cur.min()}, {cur.max()}]")
        prevs.append(np.concatenate([[k], cur[:-1]]))
        curs.append(cur)
        size += len(cur)
        if size >= chunk:
            yield np.concatenate(prevs), np.concatenate(curs)
            prevs, curs, size = [], [], 0
    if curs:
        yield np.concatenate(prevs), np.concatenate(curs)


# ---- the loaded model -------------------------------------------------------------------

class CodeLM:
    """A trained code LM, ready for inference.

    >>> lm = CodeLM.load("runs/demo/lm")
    >>> states = lm.hidden_states([codes_a, codes_b])   # [(layers+1, T_a, d), (layers+1, T_b, d)]
    >>> lm.perplexity(val_clips)
    >>> lm.generate(prompt_codes, n=200, temperature=0.9, top_k=50, seed=0)   # (200,)
    """

    def __init__(self, model, info: dict, device: torch.device | None = None):
        self.model = model.eval()
        self.info = dict(info)
        self.device = device or next(model.parameters()).device
        # Several codes per patch (tokenlm.lm.multilevel): the config's codebook_size counts every
        # level's ids; K, the codes of one level, is what codes are checked against.
        self.levels = int(info.get("levels", 1))
        self.codebook_size = int(info["codebook_size"]) // self.levels
        self.bos = int(info["bos_token_id"])
        self.context = int(model.config.n_positions)
        # LMs from before objectives existed are next-code LMs.
        self.objective = str(info.get("objective", "next"))

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, lm_dir: str | Path, device=None, attn_implementation: str = "auto") -> "CodeLM":
        """Load ``RUN/lm`` (or any folder with its config.json + model.safetensors)."""
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        lm_dir = Path(lm_dir)
        if not (lm_dir / CONFIG).is_file():
            raise ArtifactError(f"no language model at {lm_dir}: run `tokenlm pretrain RUN` first")
        check_outputs(lm_dir)  # missing or truncated files: one line naming the file
        device = pick_device(device)
        hf_logging.disable_progress_bar()
        try:
            model = GPT2LMHeadModel.from_pretrained(
                lm_dir, attn_implementation=resolve_attn_implementation(attn_implementation, device))
        except Exception as err:  # missing/truncated weights, a foreign config: several error types
            if isinstance(err, MemoryError):
                raise
            raise ArtifactError(f"{lm_dir}: cannot load the language model ({str(err).splitlines()[0]})") from None
        info = getattr(model.config, "tokenlm", None)
        if not isinstance(info, dict) or "codebook_size" not in info:
            raise ArtifactError(f"{lm_dir / CONFIG} has no 'tokenlm' section: not a tokenlm code LM")
        _check_vocabulary(info, model.config.vocab_size, lm_dir / CONFIG)
        return cls(with_causal_lm_loss(model).to(device), info, device)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.n_layer)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.n_embd)

    @property
    def code_rate(self) -> float | None:
        """Codes per second of audio of the tokens it was trained on."""
        return self.info.get("code_rate")

    def check_codes(self, codes: torch.Tensor | np.ndarray, where: str = "codes") -> None:
        """Refuse codes outside this LM's codebook (e.g. from a tokenizer with another K)."""
        codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ArtifactError(f"{where} span [{int(codes.min())}, {int(codes.max())}] but this LM was trained "
                                f"on a {self.codebook_size}-code tokenizer (codes 0..{self.codebook_size - 1})")

    def _clips(self, codes) -> list[np.ndarray]:
        """A list of 1-D clips from a list of arrays/tensors, a (B, T) tensor or one 1-D clip
        ((T, L) clips, a (B, T, L) tensor or one (T, L) clip for an LM of L levels)."""
        dims = 1 if self.levels == 1 else 2
        if isinstance(codes, (torch.Tensor, np.ndarray)):
            array = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else codes
            clips = [array] if array.ndim == dims else list(array)
        else:
            clips = [c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c) for c in codes]
        out = []
        for i, clip in enumerate(clips):
            if self.levels > 1 and clip.size == 0:
                clip = clip.reshape(0, self.levels)
            if self.levels == 1 and clip.ndim != 1:
                raise ConfigError(f"clip {i}: codes must be 1-D, got shape {tuple(clip.shape)}")
            if self.levels > 1 and (clip.ndim != 2 or clip.shape[1] != self.levels):
                raise ConfigError(f"clip {i}: codes must be (T, {self.levels}) for this {self.levels}-level LM, "
                                  f"got shape {tuple(clip.shape)}")
            clip = clip.astype(np.int64)
            self.check_codes(clip, where=f"clip {i}'s codes")
            out.append(clip)
        return out

    def _bidirectional_mask(self, ids: torch.Tensor) -> torch.Tensor | None:
        """A masked-code LM reads a clip both ways, seeing neither padding nor other clips (as
        in its training, without mask tokens); a causal LM needs no mask (right padding)."""
        if self.objective != "masked":
            return None
        return same_clip_mask(ids, self.bos, dtype=next(self.model.parameters()).dtype)

    def _require_causal(self, what: str) -> None:
        if self.objective == "masked":
            raise ConfigError(f"{what} does not apply to a masked-code LM (objective masked): "
                              f"train one with lm.objective next or multi")

    # -- hidden states ------------------------------------------------------------------
    @torch.inference_mode()
    def hidden_states(self, codes, batch_size: int = 16) -> list[torch.Tensor]:
        """Hidden states of every layer for each clip: a list of float32 CPU tensors
        ``(layers + 1, T_i, d)``, one per clip, T_i = the clip's number of codes.

        Index 0 is the token + position embedding, index i the output of block i; the last
        one has the final layer norm applied (as ``transformers`` returns it). ``codes`` is a
        list of 1-D arrays/tensors of any lengths, a (B, T) LongTensor or one 1-D clip.
        Clips are batched (right-padded, ``batch_size`` windows at a time) and clips longer
        than the context are read with sliding windows (module docstring). A masked-code LM
        (objective masked) reads each window both ways, without mask tokens.
        """
        clips = self._clips(codes)
        layers, width = self.num_layers + 1, self.hidden_size
        out = [torch.zeros(layers, len(c), width) for c in clips]
        jobs = []  # (clip index, start, end, emit_from) in sequence positions; seq = [BOS] + clip
        for i, clip in enumerate(clips):
            jobs += [(i, *w) for w in plan_windows(len(clip) + 1, self.context, first=1)]
        for batch in _batches_by_length(jobs, batch_size):
            if self.levels > 1:  # a patch: the sum of its levels' embeddings (tokenlm.lm.multilevel)
                bos_row = np.full((1, self.levels), self.codebook_size)
                inputs = [multilevel.to_ids(np.concatenate([bos_row, clips[i]])[a:b], self.codebook_size)
                          for i, a, b, _ in batch]
                ids, _ = multilevel.pad(inputs, None, self.bos)
                result = multilevel.forward(self.model, ids.to(self.device), output_hidden_states=True,
                                            use_cache=False)
            else:
                inputs = [np.concatenate([[self.bos], clips[i]])[a:b] for i, a, b, _ in batch]
                ids, _ = pad_batch(inputs, None, self.bos)
                ids = ids.to(self.device)
                result = self.model(input_ids=ids, attention_mask=self._bidirectional_mask(ids),
                                    output_hidden_states=True, use_cache=False)
            stacked = torch.stack(result.hidden_states, dim=1).float().cpu()  # (B, layers+1, T, d)
            for row, (i, a, b, emit) in enumerate(batch):
                # Sequence position p holds clip position p-1 (BOS is position 0).
                out[i][:, emit - 1:b - 1] = stacked[row, :, emit - a:b - a]
        return out

    @torch.inference_mode()
    def pooled_hidden_states(self, codes, batch_size: int = 16) -> torch.Tensor:
        """Mean over time of ``hidden_states``: (clips, layers + 1, d); an empty clip gives zeros."""
        states = self.hidden_states(codes, batch_size=batch_size)
        return torch.stack([s.mean(dim=1) if s.shape[1] else s.sum(dim=1) for s in states])

    # -- likelihood ---------------------------------------------------------------------
    @torch.inference_mode()
    def log_likelihood(self, codes, batch_size: int = 16) -> list[torch.Tensor]:
        """Natural-log probability of each code given BOS and the codes before it: a list of
        (T_i,) float32 tensors. Special tokens keep their share of the softmax (they are part
        of the model), which is what training's validation loss measures too."""
        self._require_causal("likelihood")
        clips = self._clips(codes)
        if self.levels > 1:  # each patch's log-probability: the sum over its levels
            return multilevel.log_likelihood(self, clips, batch_size)
        out = [torch.zeros(len(c)) for c in clips]
        jobs = []
        for i, clip in enumerate(clips):
            for (inputs, labels), (a, _, emit) in zip(scoring_windows(clip, self.bos, self.context),
                                                     plan_windows(len(clip), self.context)):
                jobs.append((i, a, emit, inputs, labels))
        for batch in _batches_by_length(jobs, batch_size, length=lambda job: len(job[3])):
            ids, labels = pad_batch([j[3] for j in batch], [j[4] for j in batch], self.bos)
            logits = self.model(input_ids=ids.to(self.device), use_cache=False).logits.float()  # (B, T, V)
            logp = torch.log_softmax(logits, dim=-1).cpu()
            picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
            for row, (i, a, emit, inputs, _) in enumerate(batch):
                # Window position q predicts clip code a + q (the code after sequence position a + q).
                q0, q1 = emit - a, len(inputs)
                out[i][a + q0:a + q1] = picked[row, q0:q1]
        return out

    def perplexity(self, codes, batch_size: int = 16) -> float:
        """exp(mean negative log-likelihood per code) over all codes of all clips."""
        logps = self.log_likelihood(codes, batch_size=batch_size)
        if self.levels > 1:
            return multilevel.perplexity_per_code(logps, self.levels)
        n = sum(len(x) for x in logps)
        if n == 0:
            return float("nan")
        return math.exp(-float(sum(x.double().sum() for x in logps)) / n)

    # -- generation ---------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompt=None, n: int = 200, *, temperature: float = 1.0, top_k: int = 0,
                 seed: int = 0, use_cache: bool = True) -> torch.LongTensor:
        """Sample ``n`` codes continuing ``prompt`` (1-D codes; None or empty: from BOS alone).

        ``temperature`` <= 0 is greedy decoding; ``top_k`` > 0 samples among the k most
        likely codes. Special tokens are never sampled. With the KV cache each new code costs
        one position's forward pass; when the window outgrows the context it restarts from its
        last ``context // 2`` codes (re-encoded once), the sliding-window rule used everywhere
        else (a prompt longer than the context is cut to its last ``context`` codes). ``use_cache=False`` recomputes the whole window each step (the reference the
        cached path is tested against). Returns the new codes only, (n,) on CPU.
        """
        self._require_causal("generation")
        prompt = self._clips([[] if prompt is None else prompt])[0]
        if self.levels > 1:  # (n, L): every level of a patch per step (tokenlm.lm.multilevel)
            return multilevel.generate(self, prompt, n, temperature, top_k, seed, use_cache)
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        window = [self.bos, *prompt.tolist()][-self.context:]  # a long prompt: its last context codes
        keep = self.context // 2
        cache, pending = None, list(window)  # pending: tokens not yet in the cache
        new = []
        for _ in range(n):
            if len(window) > self.context:  # the newest code has no position left: slide
                window = window[-keep:]
                cache, pending = None, list(window)
            if use_cache:
                if cache is None:
                    from transformers import DynamicCache

                    cache = DynamicCache(config=self.model.config)
                ids = torch.tensor([pending], device=self.device)
                out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
            else:
                out = self.model(input_ids=torch.tensor([window], device=self.device), use_cache=False)
            code = self._sample(out.logits[0, -1], temperature, top_k, generator)
            new.append(code)
            window.append(code)
            pending = [code]
        return torch.tensor(new, dtype=torch.long)

    def _sample(self, logits: torch.Tensor, temperature: float, top_k: int, generator) -> int:
        logits = logits.float()[: self.codebook_size]  # (K,) special tokens are never sampled
        if temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / temperature
        if top_k and top_k < len(logits):
            threshold = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < threshold, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))


def _check_vocabulary(info: dict, vocab_size: int, where: Path) -> None:
    """The ``tokenlm`` section's codebook size and BOS id: integers that fit the model's
    vocabulary as vocab_layout lays it out (codes 0..K-1, then BOS)."""
    size, bos = info.get("codebook_size"), info.get("bos_token_id")
    for name, value in (("codebook_size", size), ("bos_token_id", bos)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArtifactError(f"{where}: tokenlm.{name} must be an integer, got {value!r}")
    if not 2 <= size < vocab_size or not size <= bos < vocab_size:
        raise ArtifactError(f"{where}: tokenlm.codebook_size {size} and bos_token_id {bos} do not fit the "
                            f"model's vocabulary of {vocab_size} ids")


def _batches_by_length(jobs: list, batch_size: int, length=lambda job: job[2] - job[1]):
    """Group jobs of similar length (longest first) so padding stays small."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    ordered = sorted(jobs, key=length, reverse=True)
    for start in range(0, len(ordered), batch_size):
        yield ordered[start:start + batch_size]
