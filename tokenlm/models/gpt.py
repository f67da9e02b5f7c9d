"""The code language model: a ``transformers`` GPT-2 built from a config (stage 4).

Vocabulary layout (recorded in the saved ``config.json`` under ``tokenlm``)::

    0 .. K-1   the tokenizer's codes (K = codebook size)
    K          BOS: starts every clip, so it also separates clips packed into one training
               sequence (predicting it = predicting that the clip ends). Also the padding
               id of inference batches, where it is never attended to (right padding under
               a causal mask) and never scored.

One special token is enough: a clip's end is the next clip's BOS, padding needs no id of
its own, and generation masks the special id out (continuations never "end").

The saved folder is a plain ``GPT2LMHeadModel`` (``config.json`` + ``model.safetensors``):
``transformers.GPT2LMHeadModel.from_pretrained(RUN/lm)`` loads it anywhere, no tokenlm
needed. The ``tokenlm`` attribute of the config tells a loader what the ids mean (codebook
size, BOS id, code rate, which tokens it was trained on) so it can refuse codes from another
tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = [
    "LMConfig",
    "ATTN_IMPLEMENTATIONS",
    "vocab_layout",
    "resolve_attn_implementation",
    "build_gpt2",
    "OBJECTIVES",
    "same_clip_mask",
    "matmul_params",
    "train_flops_per_token",
]

ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa")
# What the LM learns to predict (tokenlm.lm.objectives): the next code (GPT, the reference), the
# next ``predict_ahead`` codes (one extra light head each), or masked spans (HuBERT/BEATs
# style, bidirectional attention on the same blocks).
OBJECTIVES = ("next", "multi", "masked")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LMConfig:
    """The model part of the ``lm:`` recipe section (training options live in ``training:``).

    The defaults are the demo model: 4 layers x 256 wide (3.4 M parameters with K=256), which
    trains at ~9-10k tokens/s on 2 idle CPU cores (scripts/bench_lm.py).
    """

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    context: int = 512  # positions the model sees at once (GPT-2's n_positions)
    # Residual and embedding dropout. Off by default: on the demo (16k train codes) early
    # stopping is the regulariser that matters (val perplexity 5.14 without, 5.04 with 0.1)
    # and CPU dropout masks cost ~13% of a step. Worth 0.1 on larger corpora, longer runs.
    dropout: float = 0.0
    attn_dropout: float = 0.0  # on the attention weights: slow on CPU, off by default
    attn_implementation: str = "auto"  # auto = the fastest measured: sdpa on CPU and CUDA
    objective: str = "next"  # one of OBJECTIVES
    predict_ahead: int = 4  # multi: codes t+1..t+n are targets of position t
    # masked: a span of ``mask_span`` codes starts at each code with probability ``mask_prob``
    # (0.15 and 4 mask about half of the codes in spans of 0.2 s at 20 codes/s, HuBERT's share).
    mask_prob: float = 0.15
    mask_span: int = 4
    # Input embeddings: "random" (GPT-2's, tied to the output head) or "centroids" (each code's
    # k-means centroid through a fixed projection, head untied: tokenlm.models.code_embeddings).
    embeddings: str = "random"
    # Share of training sequences made of clip openings (tokenlm.training.clip_starts): crops
    # of crop_codes[0]..crop_codes[1] codes from a clip's first code, as the probe reads clips.
    start_crops: float = 0.0
    crop_codes: tuple[int, int] = (20, 40)

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.context < 2:
            raise ValueError(f"context must be >= 2, got {self.context}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
                             f"got {self.attn_implementation!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.predict_ahead < 1:
            raise ValueError(f"predict_ahead must be >= 1, got {self.predict_ahead}")
        if not 0.0 < self.mask_prob < 1.0 or self.mask_span < 1:
            raise ValueError(f"mask_prob must be in (0, 1) and mask_span >= 1, got {self.mask_prob} and {self.mask_span}")
        if self.embeddings not in ("random", "centroids"):
            raise ValueError(f"embeddings must be random or centroids, got {self.embeddings!r}")
        if not 0.0 <= self.start_crops <= 1.0:
            raise ValueError(f"start_crops must be in [0, 1], got {self.start_crops}")
        if self.start_crops and self.objective == "multi":
            # multi's targets ahead find clip ends by BOS labels; an opening ends on its clip's next code.
            raise ValueError("start_crops applies to objectives next and masked, not multi")
        if len(self.crop_codes) != 2 or not 1 <= self.crop_codes[0] <= self.crop_codes[1]:
            raise ValueError(f"crop_codes takes two lengths 1 <= low <= high, got {self.crop_codes!r}")

    def key(self) -> dict:
        """The settings that shape this model: those of other objectives are left out, so an
        LM trained before objectives existed (next) keeps its stage key."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.objective == "next":
            del out["objective"]
        if self.objective != "multi":
            del out["predict_ahead"]
        if self.objective != "masked":
            del out["mask_prob"], out["mask_span"]
        if self.embeddings == "random":  # keys added later stay out at their defaults: no rerun
            del out["embeddings"]
        if not self.start_crops:
            del out["start_crops"], out["crop_codes"]
        return out


def vocab_layout(codebook_size: int) -> dict:
    """Token ids for a codebook of size K: codes 0..K-1, then the special tokens."""
    if not 1 <= codebook_size <= 65535:
        raise ValueError(f"codebook size must be in [1, 65535], got {codebook_size}")
    return {"codebook_size": codebook_size, "bos_token_id": codebook_size, "vocab_size": codebook_size + 1}


def resolve_attn_implementation(name: str, device: torch.device | str | None = None) -> str:
    """'auto' -> the implementation measured fastest on that device type: sdpa, on CPU too.

    Measured on 2 CPU cores, the two interleaved step by step (scripts/bench_lm.py and the
    notes in the LM's issue): sdpa 2-7% faster than eager for 40-, 128- and 512-code
    sequences. An earlier measurement where eager won by 2x passed an attention mask, which
    sends sdpa to its slow masked path; tokenlm never passes one (right padding under a causal
    mask needs none), so sdpa runs its fused causal kernel. On CUDA sdpa's fused kernels win.
    ``device`` is accepted so the choice can differ per device type if measurements change.
    """
    if name != "auto":
        return name
    return "sdpa"


def build_gpt2(cfg: LMConfig, codebook_size: int, *, device=None, info: dict | None = None):
    """A freshly initialised ``GPT2LMHeadModel`` for codes of a K-entry codebook.

    ``info`` (code rate, tokens hash, ...) is stored in the config's ``tokenlm`` attribute
    next to the vocabulary layout, so it travels inside ``config.json``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    layout = vocab_layout(codebook_size)
    bos = layout["bos_token_id"]
    masked = cfg.objective == "masked"
    if masked:  # one more special token after BOS: the mask
        layout.update(mask_token_id=layout["vocab_size"], vocab_size=layout["vocab_size"] + 1)
    config = GPT2Config(
        vocab_size=layout["vocab_size"],
        n_positions=cfg.context,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.attn_dropout,
        bos_token_id=bos,
        eos_token_id=bos,  # a new clip starting = this one ended (for transformers' generate)
        # No pad id: batches are right-padded (with BOS) and need no attention mask under the
        # causal mask; a pad id would only make transformers scan every batch for padding.
        pad_token_id=None,
        # Centroid embeddings (tokenlm.models.code_embeddings) come with an output head of its own.
        tie_word_embeddings=cfg.embeddings == "random",
        # GPT-2's "gelu_new" is a tanh formula spelled out in python ops: on CPU its forward and
        # backward took a quarter of the step time. torch's GELU is one fused kernel each way.
        activation_function="gelu",
        loss_type="ForCausalLM",
        attn_implementation=resolve_attn_implementation(cfg.attn_implementation, device),
        # transformers' switch to bidirectional attention in decoder-only models (checked in
        # the installed 5.x: sdpa and eager honour it, and from_pretrained keeps it).
        **({"is_causal": False} if masked else {}),
        tokenlm={"format": FORMAT_VERSION, **layout, "special_tokens": {"bos": bos, "pad": bos},
                 "context": cfg.context, "objective": cfg.objective, **(info or {})},
    )
    model = with_causal_lm_loss(GPT2LMHeadModel(config))
    return model.to(device) if device is not None else model


def same_clip_mask(input_ids: torch.Tensor, bos: int, dtype=torch.float32) -> torch.Tensor:
    """Additive attention mask (B, 1, T, T) for a bidirectional LM: a position attends only to
    positions of its own clip. Every BOS opens a clip, so clips packed into one training
    sequence do not see each other and BOS padding (each pad a clip of its own) is never seen;
    a clip is then read the same way in training and at probe time."""
    clip = torch.cumsum(input_ids == bos, dim=1)  # (B, T) clip number of each position
    same = clip.unsqueeze(2) == clip.unsqueeze(1)  # (B, T, T)
    return torch.zeros(same.shape, dtype=dtype, device=input_ids.device).masked_fill(
        ~same, torch.finfo(dtype).min).unsqueeze(1)


def with_causal_lm_loss(model):
    """Name the model's loss for transformers. It looks the loss up by the model's own
    ``loss_type``, guessed from the class name, and "GPT2LMHeadModel" names none of its
    losses (the config's ``loss_type`` is not read), so every forward with labels warned
    "loss_type=None ... unrecognized" before falling back to this very loss."""
    model.loss_type = "ForCausalLM"
    return model


def matmul_params(n_layer: int, n_embd: int, vocab_size: int) -> int:
    """Weights that take part in a matmul per token: 12 d^2 per block (qkv 3d^2, projection
    d^2, MLP 8d^2) plus the (tied) output layer V*d. Embedding lookups and biases cost no
    matmul FLOPs, so they are left out."""
    return 12 * n_layer * n_embd * n_embd + vocab_size * n_embd


def train_flops_per_token(n_layer: int, n_embd: int, vocab_size: int, seq_len: float) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), the PaLM appendix formula:
    ``6 * matmul_params + 12 * n_layer * n_embd * seq_len``. The second term is QK^T and
    attention x V over the full T x T score matrix, as eager attention computes it."""
    return 6.0 * matmul_params(n_layer, n_embd, vocab_size) + 12.0 * n_layer * n_embd * seq_len
