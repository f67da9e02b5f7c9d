"""``tokenlm generate-codes``: continue a prompt with the code LM and write the codes (.npy).

    tokenlm generate-codes RUN --prompt-audio IN.wav --n 200 --temperature 0.9 --top-k 50
    tokenlm generate-codes RUN --prompt-codes prompt.npy --n 200 --out cont.npy

The .npy holds the prompt's codes followed by the new ones (int64, 1-D), so decoding it gives
the prompt and its continuation in one piece; ``--no-prompt`` keeps only the new codes. A
JSON file beside it records the prompt length, sampling settings, the LM and the code rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenlm.core.errors import ConfigError
from tokenlm.core.outputs import has_generation_record, publish_json, publish_npy
from tokenlm.data.audio import load_audio
from tokenlm.lm.code_lm import CodeLM
from tokenlm.pipeline.loaders import load_lm, load_lm_tokenizer
from tokenlm.run.rundir import RunDir, as_run, generated_codes_file, info_file


def read_prompt_codes(path: str | Path, levels: int = 1) -> np.ndarray:
    """1-D codes from a .npy file or a text file of whitespace/comma separated integers; for an
    LM of several codes per patch, a (T, levels) .npy (or a text file of T x levels integers,
    a patch's levels side by side)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt codes not found: {path}")
    try:
        if path.suffix == ".npy":
            codes = np.load(path, allow_pickle=False)
        else:
            codes = np.array(path.read_text().replace(",", " ").split(), dtype=np.int64)
    except (ValueError, EOFError) as err:  # EOFError: an empty or truncated .npy
        raise ConfigError(f"{path}: not a list of integer codes ({err})") from None
    if levels > 1 and codes.ndim == 1 and path.suffix != ".npy" and len(codes) % levels == 0:
        codes = codes.reshape(-1, levels)
    shape = "a 1-D array" if levels == 1 else f"a (T, {levels}) array"
    if codes.ndim != (1 if levels == 1 else 2) or (levels > 1 and codes.shape[1] != levels) \
            or not np.issubdtype(codes.dtype, np.integer):
        raise ConfigError(f"{path}: expected {shape} of integer codes, got {codes.dtype} {codes.shape}")
    return codes.astype(np.int64)


def encode_prompt_audio(run: str | RunDir, path: str | Path, lm: CodeLM) -> np.ndarray:
    """Codes of an audio file, with the run's tokenizer (the one the LM's tokens came from)."""
    tokenizer = load_lm_tokenizer(run, lm)
    wav = load_audio(path, tokenizer.sample_rate)
    return tokenizer.encode(wav, tokenizer.sample_rate).numpy().astype(np.int64)


def generate_codes(run: str | RunDir, *, prompt_codes: str | Path | None = None, prompt_audio: str | Path | None = None,
                   n: int = 200, temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                   out: str | Path | None = None, include_prompt: bool = True, device: str | None = None) -> Path:
    """Sample ``n`` codes after a prompt (codes file, audio file, or none: from BOS) with
    RUN/lm and write them to ``out`` (default RUN/generated/<prompt>-seed<seed>.npy)."""
    run = as_run(run)
    if prompt_codes and prompt_audio:
        raise ConfigError("give --prompt-codes or --prompt-audio, not both")
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    lm = load_lm(run, device)
    if prompt_codes:
        prompt = read_prompt_codes(prompt_codes, lm.levels)
        lm.check_codes(prompt, where=f"{prompt_codes}")
    elif prompt_audio:
        prompt = encode_prompt_audio(run, prompt_audio, lm)
    else:
        prompt = np.zeros(0 if lm.levels == 1 else (0, lm.levels), dtype=np.int64)
    new = lm.generate(prompt, n, temperature=temperature, top_k=top_k, seed=seed).numpy()
    codes = np.concatenate([prompt, new]) if include_prompt else new
    source = prompt_codes or prompt_audio
    out = Path(out) if out else run.generated / generated_codes_file(source, seed)
    publish_npy(out, codes.astype(np.int64), legacy=has_generation_record)
    rate = lm.code_rate
    publish_json(info_file(out), legacy=has_generation_record, obj={
        "lm": str(run.lm), "prompt": str(source) if source else None,
        "prompt_length": int(len(prompt)) if include_prompt else 0, "generated": int(n),
        "temperature": temperature, "top_k": top_k, "seed": seed,
        "codebook_size": lm.codebook_size, "code_rate": rate, "levels": lm.levels,
        "seconds": round(len(codes) / rate, 3) if rate else None,
    })
    return out
