"""Training objectives of the code LM besides next-code prediction (``lm.objective``).

``next`` (the reference) is ``tokenlm.lm.code_lm.lm_loss``. The others train the same GPT-2 blocks:

* ``multi``: position t predicts codes t+1 .. t+n (n = ``predict_ahead``). t+1 is the LM's own
  head; t+k for k >= 2 is the same (tied) output layer behind a light residual linear map of
  its own (``AheadHeads``), and the loss is the mean over the n targets. The extra maps exist
  only in training: the saved LM is the plain GPT-2, so perplexity and generation work as
  ever. In eval mode only the next-code head runs, so validation, early stopping and val_ppl
  judge the next-code head exactly as for ``next``. A target past the end of its clip (a BOS
  between) is not scored: the next clip of a packed sequence is drawn at random.
* ``masked`` (HuBERT/BEATs style): spans of input codes are replaced by a mask token and
  predicted with bidirectional attention (``models.gpt.same_clip_mask``: a position sees its
  own clip, both ways). The loss is over the masked codes; perplexity and generation do not
  apply, masked-prediction accuracy is reported instead.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tokenlm.lm.code_lm import IGNORE, pad_batch
from tokenlm.models.gpt import same_clip_mask

__all__ = ["AheadHeads", "ahead_labels", "multi_loss", "MaskedSpans", "mask_spans", "masked_loss",
           "masked_validation_batches", "masked_scores"]


# ---- multi: several codes ahead ---------------------------------------------------------

class AheadHeads(nn.Module):
    """A GPT2LMHeadModel (``lm``) and ``n - 1`` light heads for codes t+2 .. t+n. Called with
    input_ids: a list of logits (B, T, V), one per target t+1 .. t+n (t+1 only in eval mode)."""

    def __init__(self, lm: nn.Module, n: int):
        super().__init__()
        self.lm = lm
        width = lm.config.n_embd
        self.heads = nn.ModuleList(nn.Linear(width, width) for _ in range(n - 1))

    def forward(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.lm.transformer(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, d)
        heads = self.heads if self.training else []
        return [self.lm.lm_head(hidden)] + [self.lm.lm_head(hidden + head(hidden)) for head in heads]


def ahead_labels(labels: torch.Tensor, k: int, bos: int) -> torch.Tensor:
    """Targets k codes ahead from next-code ``labels`` (B, T): position j gets labels[j + k - 1],
    IGNORE where a clip ends (BOS) or padding lies among labels[j .. j + k - 2], or past the end."""
    out = torch.full_like(labels, IGNORE)
    width = labels.shape[1]
    if k > width:
        return out
    out[:, :width - k + 1] = labels[:, k - 1:]
    crossed = (labels == bos) | (labels == IGNORE)
    for i in range(k - 1):
        out[:, :width - i].masked_fill_(crossed[:, i:], IGNORE)
    return out


def multi_loss(model, batch, bos: int) -> tuple[torch.Tensor, int]:
    """Mean over the heads of each head's mean cross-entropy; the count is of next-code targets
    (what validation weighs batches by, as for ``lm_loss``)."""
    input_ids, labels = batch
    losses = [_mean_ce(logits, ahead_labels(labels, k, bos) if k > 1 else labels)
              for k, logits in enumerate(model(input_ids), start=1)]
    return torch.stack(losses).mean(), int((labels != IGNORE).sum())


def _mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over scored positions; 0 (not NaN) when there are none."""
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / max(int((labels != IGNORE).sum()), 1)


# ---- masked: spans of codes hidden, predicted both ways ------------------------------------

def mask_spans(ids: np.ndarray | torch.Tensor, rng: np.random.Generator, *, mask_id: int, bos: int,
               prob: float, span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) LongTensors (B, T): a span of ``span`` codes starts at each position with
    probability ``prob``; masked codes become ``mask_id`` in the inputs and are the labels
    (IGNORE elsewhere). BOS is never masked, so clip boundaries stay visible."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64)).reshape(-1, np.shape(ids)[-1])
    starts = torch.from_numpy(rng.random(tuple(ids.shape)) < prob)
    masked = torch.zeros_like(starts)
    for i in range(min(span, ids.shape[1])):
        masked[:, i:] |= starts[:, :ids.shape[1] - i]
    masked &= ids != bos
    return ids.masked_fill(masked, mask_id), ids.masked_fill(~masked, IGNORE)


class MaskedSpans:
    """Training batches for ``masked`` from a next-code batch source ``(rng, B) -> (ids, _)``:
    the same sequences, spans masked with the same rng (so a batch is still a pure function of
    the seed and step)."""

    def __init__(self, source, **masking):
        self.source, self.masking = source, masking

    def __call__(self, rng: np.random.Generator, batch_size: int):
        ids, _ = self.source(rng, batch_size)
        return mask_spans(ids, rng, **self.masking)


def masked_validation_batches(clips, context: int, batch_size: int, **masking) -> list:
    """Fixed batches covering every code of ``clips`` once: ``[BOS] + clip`` cut into pieces of
    at most ``context`` codes, masked with a fixed seed, right-padded with BOS (which
    ``same_clip_mask`` hides)."""
    rng = np.random.default_rng(0)
    bos = masking["bos"]
    pieces = []
    for clip in clips:
        seq = np.concatenate([[bos], np.asarray(clip, dtype=np.int64)])
        pieces += [mask_spans(seq[i:i + context][None], rng, **masking) for i in range(0, len(seq), context)]
    pieces.sort(key=lambda p: p[0].shape[1], reverse=True)
    return [pad_batch([p[0][0] for p in chunk], [p[1][0] for p in chunk], bos)
            for chunk in (pieces[i:i + batch_size] for i in range(0, len(pieces), batch_size))]


def masked_logits(model, input_ids: torch.Tensor, bos: int) -> torch.Tensor:
    mask = same_clip_mask(input_ids, bos, dtype=next(model.parameters()).dtype)
    return model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)


def masked_loss(model, batch, bos: int) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the masked codes, and their number."""
    input_ids, labels = batch
    return _mean_ce(masked_logits(model, input_ids, bos), labels), int((labels != IGNORE).sum())


@torch.no_grad()
def masked_scores(model, batches, bos: int, codebook_size: int, device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the masked codes of ``batches``; the prediction is the
    most likely code (special tokens excluded)."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    for input_ids, labels in batches:
        input_ids, labels = input_ids.to(device), labels.to(device)
        logits = masked_logits(model, input_ids, bos).float()
        scored = labels != IGNORE
        n = int(scored.sum())
        total += float(_mean_ce(logits, labels)) * n
        correct += int((logits[..., :codebook_size].argmax(-1) == labels)[scored].sum())
        count += n
    return (total / count, correct / count) if count else (float("nan"), float("nan"))
