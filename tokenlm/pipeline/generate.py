"""``tokenlm generate``: continue audio with the code LM, then hear it through the WaveNet.

    tokenlm generate runs/demo --prompt data/demo/piano/piano_gm000_000.wav --seconds 3 out.wav

The prompt is encoded with the run's tokenizer, its codes are continued by RUN/lm and the
whole (prompt + continuation) is decoded by RUN/vocoder. A JSON file beside the output
records the settings and the codes. ``pipeline_example`` is the same thing done once after
training by ``tokenlm run``, so the report has the whole pipeline to listen to.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokenlm.core.errors import ConfigError
from tokenlm.core.fileio import read_jsonl
from tokenlm.core.outputs import has_generation_record, publish_json
from tokenlm.data.audio import load_audio
from tokenlm.pipeline.loaders import check_same_codes, load_lm, load_vocoder
from tokenlm.run.artifacts import STAGE_FILE
from tokenlm.run.rundir import RunDir, as_run, continuation_file, info_file, is_finished
from tokenlm.vocoder.vocoder import publish_wav


@dataclass(frozen=True)
class Continuation:
    """How to continue: how long, and how each model samples.

    With ``prime`` the prompt's own audio is teacher-forced into the WaveNet (it comes out as
    the input, mu-law quantised) and only the continuation is sampled; without it the whole
    clip is resynthesised from its codes.
    """

    seconds: float = 2.0  # added after the prompt
    temperature: float = 1.0  # the LM's; 0 = greedy
    top_k: int = 0  # the LM samples among the k likeliest codes; 0 = all
    seed: int = 0
    vocoder_temperature: float = 1.0
    prime: bool = True


def generate_file(run: str | RunDir, out_path: str | Path, how: Continuation = Continuation(), *,
                  prompt: str | Path | None = None, device=None, progress: bool = True) -> dict:
    """Encode ``prompt`` (or start from nothing), continue its codes for ``how.seconds`` with
    RUN/lm, decode prompt + continuation with RUN/vocoder into ``out_path``. Returns a summary
    (also written beside ``out_path`` as JSON, codes included)."""
    run = as_run(run)
    if how.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0, got {how.seconds}")
    lm = load_lm(run, device)
    vocoder, tokenizer = load_vocoder(run, device=device)
    check_same_codes(run, lm, vocoder)
    wav = np.zeros(0, np.float32)
    prompt_codes = np.zeros(0, np.int64)
    if prompt is not None:
        wav = load_audio(prompt, tokenizer.sample_rate, min_samples=tokenizer.coder.features.n_fft)
        prompt_codes = tokenizer.encode(wav, tokenizer.sample_rate).numpy().astype(np.int64)
    n_new = max(1, round(how.seconds * vocoder.code_rate))
    new = lm.generate(prompt_codes, n_new, temperature=how.temperature, top_k=how.top_k, seed=how.seed).numpy()
    codes = np.concatenate([prompt_codes, new])
    primed = bool(how.prime and len(wav))
    start = time.perf_counter()
    audio = vocoder.resynthesise(codes, prompt=wav if primed else None, temperature=how.vocoder_temperature,
                                 seed=how.seed, progress=progress)
    synthesis = time.perf_counter() - start
    publish_wav(out_path, audio, vocoder.sample_rate, legacy=has_generation_record)
    settings = {k: v for k, v in asdict(how).items() if k not in ("seconds", "prime")}
    summary = {
        "prompt": str(prompt) if prompt else None, "prompt_codes": int(len(prompt_codes)),
        "prompt_seconds": len(prompt_codes) * vocoder.samples_per_code / vocoder.sample_rate, "primed": primed,
        "generated_codes": int(n_new), "seconds": len(audio) / vocoder.sample_rate, **settings,
        "synthesis_seconds": round(synthesis, 3), "codebook_size": vocoder.codebook_size,
        "code_rate": vocoder.code_rate, "codes": codes.tolist(), "out": str(out_path),
    }
    publish_json(info_file(out_path), summary, legacy=has_generation_record)
    return summary


def pipeline_example(run: str | RunDir, device=None, progress: bool = True) -> Path | None:
    """Hear the whole pipeline once: the first test clip continued by RUN/lm for two seconds
    (Continuation's default) and decoded by RUN/vocoder, into RUN/generated/ (the report plays
    it). Made again only when either model is newer than it; None when the run has no test clip
    or no LM."""
    run = as_run(run)
    clips = [r for r in read_jsonl(run.manifest) if r["status"] == "ok" and r["split"] == "test"]
    if not clips or not is_finished(run.lm):
        return None
    out = run.generated / continuation_file(clips[0]["path"])
    models = max((folder / STAGE_FILE).stat().st_mtime for folder in (run.lm, run.vocoder))
    if not out.is_file() or out.stat().st_mtime < models:  # new models, new example
        generate_file(run, out, Continuation(), prompt=clips[0]["path"], device=device,
                      progress=progress)
    return out
