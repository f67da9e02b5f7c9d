"""tokenlm: self-supervised audio tokenization and code language modelling.

The public API, imported on first use (so ``import tokenlm`` and ``tokenlm --help`` stay
fast; torch loads only when a model does):

    from tokenlm import AudioTokenizer, CodeLM, decode_audio, load_audio
    tokenizer = AudioTokenizer.load("runs/demo/tokenizer")
    codes = tokenizer.encode(load_audio("clip.wav", tokenizer.sample_rate), tokenizer.sample_rate)
    audio = decode_audio(tokenizer, codes)          # RUN/vocoder if trained, else Griffin-Lim
    ppl = CodeLM.load("runs/demo/lm").perplexity([codes])
"""

import importlib
import os

# OpenMP threads that spin while waiting make torch's many small CPU ops up to 100x slower
# whenever another process shares the cores (measured: one log-mel call 110 ms instead of
# 1 ms). Sleeping waiters cost nothing measurable on an idle machine. Must be set before
# torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "AudioTokenizer": "tokenlm.tokenizer.tokenizer",
    "CodeLM": "tokenlm.lm.code_lm",
    "Vocoder": "tokenlm.vocoder.vocoder",
    "RunDir": "tokenlm.run.rundir",
    "load_lm": "tokenlm.pipeline.loaders",
    "load_vocoder": "tokenlm.pipeline.loaders",
    "load_lm_tokenizer": "tokenlm.pipeline.loaders",
    "load_audio": "tokenlm.data.audio",
    "encode_clips": "tokenlm.tokenizer.encoding",
    "griffin_lim": "tokenlm.vocoder.griffin_lim",
    "decode_audio": "tokenlm.vocoder.decode",
    "run_recipe": "tokenlm.pipeline.run",
    "PretrainedModel": "tokenlm.pipeline.pretrained",
    "TokenlmError": "tokenlm.core.errors",
}
_SUBMODULES = ("hear",)  # HEAR's API: tokenlm.hear.load_model(...)

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"tokenlm.{name}")
    else:
        raise AttributeError(f"module 'tokenlm' has no attribute {name!r}")
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__():
    return sorted({*globals(), *__all__})
