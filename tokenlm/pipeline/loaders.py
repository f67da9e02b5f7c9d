"""A run's trained models, loaded for the tools that use them (decode, generate, generate-codes).

Each loader fails in one line that names the command to run first, and checks what it loads
against the rest of the run: codes only mean something together with the tokenizer that made
them, so a vocoder or an LM is paired with that tokenizer, and with each other, or refused.

    lm = load_lm(run)                               # RUN/lm
    vocoder, tokenizer = load_vocoder(run)          # RUN/vocoder and its tokenizer
    check_same_codes(run, lm, vocoder)              # both trained on the same codes
"""

from __future__ import annotations

from tokenlm.core.errors import ArtifactError
from tokenlm.lm.code_lm import CodeLM
from tokenlm.run.rundir import CONFIG, RunDir, as_run
from tokenlm.tokenizer.tokenizer import AudioTokenizer
from tokenlm.vocoder.vocoder import Vocoder


def load_lm(run: str | RunDir, device=None) -> CodeLM:
    """RUN/lm, the code language model."""
    run = as_run(run)
    if not (run.lm / CONFIG).is_file():
        raise ArtifactError(f"{run.root} has no language model yet: run `tokenlm pretrain {run.root}` first")
    return CodeLM.load(run.lm, device=device)


def load_vocoder(run: str | RunDir, codebook_size: int | None = None, device=None) -> tuple[Vocoder, AudioTokenizer]:
    """(Vocoder, AudioTokenizer) of a run, checked against each other. The tokenizer's
    codebook is the vocoder's unless ``codebook_size`` asks for another (which then fails)."""
    run = as_run(run)
    if not (run.vocoder / CONFIG).is_file():
        raise ArtifactError(f"{run.root} has no vocoder yet: run `tokenlm vocoder {run.root}` first")
    vocoder = Vocoder.load(run.vocoder, device=device)
    tokenizer = AudioTokenizer.load(run.tokenizer, codebook_size=codebook_size or vocoder.codebook_size)
    vocoder.check_tokenizer(tokenizer)
    return vocoder, tokenizer


def load_lm_tokenizer(run: str | RunDir, lm: CodeLM) -> AudioTokenizer:
    """The run's tokenizer with the codebook ``lm`` was trained on, refused if retrained since."""
    run = as_run(run)
    tokenizer = AudioTokenizer.load(run.tokenizer, codebook_size=lm.codebook_size)
    expected, actual = lm.info.get("tokenizer_hash"), tokenizer.info.get("tokenizer_hash")
    if expected and actual and expected != actual:
        raise ArtifactError(f"{run.tokenizer} (codebook {actual}) is not the tokenizer this LM was trained "
                            f"with ({expected}): retrain the LM or use its run's tokenizer")
    return tokenizer


def check_same_codes(run: str | RunDir, lm: CodeLM, vocoder: Vocoder) -> None:
    """Fail unless the LM and the vocoder were trained on the same codes (K and tokenizer)."""
    run = as_run(run)
    if lm.codebook_size != vocoder.codebook_size:
        raise ArtifactError(f"{run.lm} was trained on K={lm.codebook_size} codes but {run.vocoder} on "
                            f"K={vocoder.codebook_size}: retrain one of them on the same codes")
    lm_hash = lm.info.get("tokenizer_hash")
    if lm_hash and vocoder.tokenizer_hash and lm_hash != vocoder.tokenizer_hash:
        raise ArtifactError(f"{run.lm} was trained on tokenizer {lm_hash} but {run.vocoder} on "
                            f"{vocoder.tokenizer_hash}: retrain one of them on the same codes")
