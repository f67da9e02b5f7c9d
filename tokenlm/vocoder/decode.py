"""Codes -> audio for any tokenizer: through a vocoder trained on its codes, else the
Griffin-Lim reference. A run-level function, so the tokenizer stays a pure codec
(audio <-> codes <-> log-mel) that knows nothing of decoders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.run.rundir import CONFIG, RunDir
from tokenlm.vocoder.griffin_lim import griffin_lim_from_codes, griffin_lim_missing
from tokenlm.vocoder.vocoder import Vocoder

if TYPE_CHECKING:  # annotation only: loading the tokenizer module pulls in faiss
    from tokenlm.tokenizer.tokenizer import AudioTokenizer


def decode_audio(tokenizer: "AudioTokenizer", codes, *, vocoder: Vocoder | None = None, seed: int = 0) -> np.ndarray:
    """Codes (N,) -> float32 audio (N * samples_per_code,) at the tokenizer's sample rate:
    through ``vocoder``, else the vocoder of the tokenizer's run (RUN/vocoder, when it was
    trained on these very codes), else Griffin-Lim phase reconstruction of the decoded log-mel
    (tokenlm.vocoder.griffin_lim), a reference rather than a good decoder."""
    vocoder = vocoder or (run_vocoder(tokenizer) if tokenizer.levels == 1 else None)  # vocoders read one level
    codes = np.asarray(codes, dtype=np.int64)
    if vocoder is not None:
        vocoder.check_tokenizer(tokenizer)
        return vocoder.resynthesise(codes, seed=seed)
    missing = griffin_lim_missing()
    if missing:
        raise ConfigError(f"decoding codes to audio without a vocoder needs Griffin-Lim, but {missing} "
                          "(or train one: tokenlm vocoder RUN)")
    return griffin_lim_from_codes(tokenizer, codes, seed=seed)


def run_vocoder(tokenizer: "AudioTokenizer") -> Vocoder | None:
    """The vocoder of the run the tokenizer was loaded from, when it decodes these very codes
    (same K, same tokenizer), else None."""
    tokenizer_dir = tokenizer.info.get("tokenizer_dir")
    if not tokenizer_dir:
        return None
    folder = RunDir(Path(tokenizer_dir).parent).vocoder
    if not (folder / CONFIG).is_file():
        return None
    vocoder = Vocoder.load(folder, device="cpu")
    try:
        vocoder.check_tokenizer(tokenizer)
    except ArtifactError:  # trained on another K or an older tokenizer: not these codes
        return None
    return vocoder
