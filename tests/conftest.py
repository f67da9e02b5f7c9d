"""Shared fixtures: tiny audio files and labelled corpora written into tmp_path.

Each fixture returns a function, so a test asks for exactly the files it needs
(``make_tone`` returns the ``tone`` function, for samples without a file):

    def test_x(write_audio, make_corpus):
        wav = write_audio("a.wav", seconds=0.5, sample_rate=8000, channels=2)
        root = make_corpus(layout="csv")          # DIR/<label>/*.wav + DIR/manifest.csv
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# One clearly different pitch per label, so features tell the labels apart.
LABEL_FREQS = (220.0, 660.0, 1980.0, 3300.0, 5000.0)


def tone(freq: float = 440.0, seconds: float = 0.5, sample_rate: int = 16000, amplitude: float = 0.5,
         channels: int = 1, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A sine (plus optional white noise): (T,) when mono, else (T, C) with the same sine in
    every channel at amplitudes amplitude, amplitude/2, ..."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wav = amplitude * np.sin(2 * np.pi * freq * t)
    if noise:
        wav = wav + noise * np.random.default_rng(seed).standard_normal(len(t))
    if channels > 1:
        wav = wav[:, None] / (1 + np.arange(channels))[None, :]
    return wav.astype(np.float32)


def sound(kind: str, seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A tone, a noise burst or a chirp, different per seed: (T,) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    if kind == "tone":
        x = 0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.1 * np.sin(2 * np.pi * 1760 * t)
    elif kind == "noise":
        x = 0.1 * rng.standard_normal(len(t)) * (1 + np.sin(2 * np.pi * 3 * t))
    else:
        x = 0.3 * np.sin(2 * np.pi * (150 + 900 * (seed + 1) * t) * t)
    return x.astype(np.float32)


def run_cli(*args) -> int:
    """Run ``tokenlm ARGS`` in-process; return its exit code (0 when it returns normally)."""
    from tokenlm.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a test module, restored afterwards. Clip-sized ops
    run fastest that way, and on a busy machine torch's spin-waiting OpenMP threads can make
    them 100x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch  # here, so tests that never touch torch do not import it

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_tone():
    """The ``tone`` function above, for tests that need samples rather than files."""
    return tone


@pytest.fixture
def write_audio(tmp_path):
    """``write_audio(rel, data=None, sample_rate=16000, subtype=None, format=None, **tone_kw)``
    writes ``data`` (default: a ``tone(**tone_kw)``) to ``tmp_path/rel`` and returns the path."""

    def write(rel: str | Path, data: np.ndarray | None = None, sample_rate: int = 16000,
              subtype: str | None = None, format: str | None = None, **tone_kw) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            data = tone(sample_rate=sample_rate, **tone_kw)
        sf.write(path, data, sample_rate, subtype=subtype, format=format)
        return path

    return write


def write_corpus(root: Path, layout: str = "folders", labels: int = 3, groups: int = 3, clips: int = 2,
                 seconds: float = 0.25, sample_rate: int = 16000) -> Path:
    """Write ROOT/<label>/<label>_g<k>_<i>.wav (16-bit PCM), one pitch per label, a different
    detune and loudness per group, and for "csv"/"jsonl" a ROOT/manifest.{csv,jsonl} with
    path,label,group ("unlabelled": a ROOT/manifest.csv of paths alone). Returns ROOT."""
    rows = []
    for li in range(labels):
        label = f"class{li}"
        for g in range(groups):
            for i in range(clips):
                rel = f"{label}/{label}_g{g}_{i}.wav"
                wav = tone(LABEL_FREQS[li % len(LABEL_FREQS)] * (1 + 0.02 * g), seconds, sample_rate,
                           amplitude=0.2 + 0.1 * g, noise=0.01, seed=len(rows))
                (root / label).mkdir(parents=True, exist_ok=True)
                sf.write(root / rel, wav, sample_rate, subtype="PCM_16")
                rows.append({"path": rel, "label": label, "group": f"{label}_g{g}"})
    if layout == "unlabelled":  # a manifest of paths alone: a pretraining corpus
        (root / "manifest.csv").write_text("path\n" + "".join(f"{r['path']}\n" for r in rows))
    elif layout == "csv":
        with open(root / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label", "group"])
            writer.writeheader()
            writer.writerows(rows)
    elif layout == "jsonl":
        (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif layout != "folders":
        raise ValueError(f"unknown layout {layout}")
    return root


@pytest.fixture
def make_corpus(tmp_path):
    """``make_corpus(name="corpus", layout="folders"|"csv"|"jsonl", labels=3, groups=3, clips=2,
    seconds=0.25, sample_rate=16000)``: ``write_corpus`` into tmp_path/name."""

    def make(name: str = "corpus", **kwargs) -> Path:
        return write_corpus(tmp_path / name, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained run made by the real stages: features, autoencoder, codebook K=8 and tokens of
    3 classes x 3 groups x 3 clips of 1 s. Shared by the whole session, so treat it as
    read-only: copy it (shutil.copytree) before running stages that write into it."""
    import torch

    from tokenlm.models.autoencoder import AutoencoderConfig
    from tokenlm.pipeline.prepare import prepare
    from tokenlm.pipeline.tokenize import tokenize
    from tokenlm.tokenizer.tokenizer import AutoencoderTraining, TokenizerConfig

    root = tmp_path_factory.mktemp("tiny")
    corpus = write_corpus(root / "corpus", labels=3, groups=3, clips=3, seconds=1.0)
    run = root / "run"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare(corpus, run, progress=False)
        config = TokenizerConfig(codebook_size=8, autoencoder=AutoencoderConfig(hidden=(64, 32), bottleneck=8),
                                 training=AutoencoderTraining(epochs=3, batch_size=64))
        tokenize(run, config, device="cpu", progress=False)
    finally:
        torch.set_num_threads(previous)
    return run


class Crash(Exception):
    """Raised by a training callback to stand for a crash (kill -9, power cut) mid-run."""


def crash_at(step_to_crash: int):
    """A training-loop callback that crashes after step ``step_to_crash``."""
    def callback(step, record):
        if step == step_to_crash:
            raise Crash
    return callback


def crash_and_resume(fit, tmp_path, capsys, crash):
    """``fit(folder, callbacks) -> result`` three times: uninterrupted in one folder; in another
    until the ``crash`` callback fires, then again there (resuming). Returns (uninterrupted
    result, resumed result, what the resumed run printed on stderr)."""
    reference = fit(tmp_path / "reference")
    with pytest.raises(Crash):
        fit(tmp_path / "resumed", [crash])
    capsys.readouterr()
    resumed = fit(tmp_path / "resumed")
    return reference, resumed, capsys.readouterr().err
