"""The vocoder stage, ``decode`` and ``generate`` on a tiny run: a fabricated corpus tokenized
at 8 kHz with 160 samples per code, a 3-layer WaveNet trained for a few steps. Checks the
artifacts, exact output lengths, rerun/resume, the tokenizer checks and the one-line errors;
whether it sounds right is for the demo run and metrics.json, not for a unit test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli as tokenlm
from tests.conftest import sound
from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.fileio import file_hash, read_json, write_json
from tokenlm.data.audio import load_audio
from tokenlm.evaluation.audio_quality import log_spectral_distance, logmel_distance_db
from tokenlm.models.wavenet import WaveNetConfig, mu_law_decode, mu_law_encode
from tokenlm.pipeline.vocoder import VocoderConfig, train_vocoder, vocoder_config
from tokenlm.tokenizer.tokenizer import AudioTokenizer
from tokenlm.training import TrainConfig, load_checkpoint
from tokenlm.vocoder.training_data import IGNORE, AlignedAudio, CropBatches
from tokenlm.vocoder.vocoder import Vocoder

SR_IN = 16000  # the corpus; the run resamples to 8 kHz
SR = 8000
SPC = 160  # hop 80 x 2-frame patches
K = 4
RECIPE = """\
features: {sample_rate: 8000, n_fft: 200, hop_length: 80, n_mels: 16, patch_frames: 2}
tokenizer:
  autoencoder: {hidden: [32, 16], bottleneck: 8}
  training: {epochs: 3, batch_size: 32}
codebook: {niter: 5}
vocoder:
  layers_per_cycle: 3
  cycles: 1
  residual_channels: 8
  gate_channels: 8
  skip_channels: 8
  cond_channels: 8
  crop_codes: 3
  val_crops: 4
  metrics_clips: 2
  metrics_seconds: 0.1
  training: {steps: 6, batch_size: 2, lr: 0.003, warmup_steps: 2, eval_every: 3, log_every: 1, device: cpu}
"""
TINY = VocoderConfig(
    model=WaveNetConfig(layers_per_cycle=3, cycles=1, residual_channels=8, gate_channels=8, skip_channels=8,
                        cond_channels=8),
    crop_codes=3, val_crops=4, metrics_clips=2, metrics_seconds=0.1,
    training=TrainConfig(steps=6, batch_size=2, lr=3e-3, warmup_steps=2, weight_decay=0.0, eval_every=3, log_every=1,
                         device="cpu"))


# Bit-identical resume needs the same thread count on both runs; tiny ops want one anyway.
pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """RUN tokenized with K=4 (features, tokenizer, tokens), no vocoder."""
    root = tmp_path_factory.mktemp("vocoder")
    for label in ("tone", "noise", "chirp"):
        (root / "data" / label).mkdir(parents=True)
        for i in range(4):
            sf.write(root / "data" / label / f"{label}_{i}.wav", sound(label, 0.3 + 0.05 * i, SR_IN, i), SR_IN,
                     subtype="PCM_16")
    (root / "tiny.yaml").write_text(RECIPE)
    assert tokenlm("tokenize", "--data", root / "data", "--out", root / "run", "--config", root / "tiny.yaml",
                   "-K", K, "--device", "cpu") == 0
    return root / "run"


@pytest.fixture(scope="module")
def trained(run, tmp_path_factory) -> Path:
    """A copy of ``run`` with a vocoder trained by the command (the original stays vocoder-free)."""
    copy = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(run, copy)
    recipe = run.parent / "tiny.yaml"
    assert vocoder_config(recipe) == TINY
    assert tokenlm("vocoder", copy, "--config", recipe, "--device", "cpu", "--no-progress", "--keep-checkpoints") == 0
    return copy


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(path, sound("chirp", 0.27, SR_IN, 5), SR_IN, subtype="PCM_16")
    return path


def test_artifacts(trained):
    out = trained / "vocoder"
    for name in ("config.json", "wavenet.safetensors", "train_log.csv", "metrics.json", "stage.json", "ckpt/last.json"):
        assert (out / name).is_file(), name
    assert not list(trained.glob(".vocoder.partial*"))
    config = read_json(out / "config.json")
    tokenizer = AudioTokenizer.load(trained / "tokenizer")
    assert config["sample_rate"] == SR and config["samples_per_code"] == SPC and config["hop_length"] == 80
    assert config["codebook_size"] == K and config["tokenizer_hash"] == tokenizer.info["tokenizer_hash"]
    assert config["wavenet"]["codebook_size"] == K and config["wavenet"]["layers_per_cycle"] == 3
    header = (out / "train_log.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "lr", "loss", "val_loss", "val_bits_per_sample", "samples_per_s", "elapsed_s"]

    metrics = read_json(out / "metrics.json")
    for key in ("vocoder_logmel_db", "vocoder_lsd_db", "codebook_logmel_db", "mulaw_logmel_db", "mulaw_lsd_db",
                "val_loss", "steps", "parameters"):
        assert isinstance(metrics[key], (int, float)) and np.isfinite(metrics[key]), key
    assert metrics["steps"] == 6 and metrics["resynthesis"]["clips"] == 2 == len(metrics["per_clip"])
    assert metrics["resynthesis"]["split"] == "val"
    samples = sorted(p.name for p in (out / "samples").glob("*.wav"))
    assert len(samples) == 4 and sum(n.endswith("_resynth.wav") for n in samples) == 2
    for path in (out / "samples").glob("*.wav"):
        info = sf.info(path)
        assert info.samplerate == SR and info.frames == 5 * SPC  # 0.1 s = 5 codes at 50 codes/s


def test_loaded_vocoder_matches_and_decodes_exact_lengths(trained, clip, tmp_path):
    vocoder = Vocoder.load(trained / "vocoder", device="cpu")
    assert vocoder.samples_per_code == SPC and vocoder.codebook_size == K
    weights = load_file(trained / "vocoder" / "wavenet.safetensors")
    best = load_checkpoint(trained / "vocoder" / "ckpt" / "best.json")["model"]
    assert all(torch.equal(weights[k], best[k]) for k in weights)

    out = tmp_path / "out.wav"
    assert tokenlm("decode", trained, clip, out, "--seed", 3, "--device", "cpu", "--no-progress") == 0
    tokenizer = AudioTokenizer.load(trained / "tokenizer")
    wav, sr = sf.read(clip, dtype="float32")
    n_codes = len(tokenizer.encode(wav, sr))
    info = sf.info(out)
    assert info.samplerate == SR and info.frames == n_codes * SPC and n_codes > 0
    again = tmp_path / "again.wav"
    assert tokenlm("decode", trained, clip, again, "--seed", 3, "--device", "cpu", "--no-progress") == 0
    assert np.array_equal(sf.read(out)[0], sf.read(again)[0])  # seeded

    # Batched clips of different lengths come out at their own lengths.
    audio = vocoder.resynthesise_batch([np.arange(4) % K, np.arange(2) % K, []], batch_size=2)
    assert [len(a) for a in audio] == [4 * SPC, 2 * SPC, 0]


def test_rerun_is_up_to_date(trained, capsys):
    out = trained / "vocoder"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert train_vocoder(trained, TINY, progress=False) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing rewritten
    assert "up to date" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_weights(run, trained, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def stop(step, record):
        if step == 3:  # just after the checkpoint at the step-3 evaluation
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_vocoder(copy, TINY, progress=False, callbacks=[stop])
    assert list(copy.glob(".vocoder.partial-*/ckpt/last.json")) and not (copy / "vocoder").exists()
    capsys.readouterr()
    train_vocoder(copy, TINY, progress=False)
    assert "resuming from step 3" in capsys.readouterr().err
    a, b = load_file(trained / "vocoder" / "wavenet.safetensors"), load_file(copy / "vocoder" / "wavenet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mismatching_tokenizer_fails_clearly(trained, clip, tmp_path, capsys):
    trained = shutil.copytree(trained, tmp_path / "run")  # the shared run keeps its current K
    # Another codebook size of the same run: the vocoder only takes its own codes.
    assert tokenlm("tokenize", "--out", trained, "-K", 3, "--device", "cpu") == 0
    capsys.readouterr()
    assert tokenlm("decode", trained, clip, tmp_path / "x.wav", "-K", 3, "--no-progress") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "codebook size 4" in err and err.count("\n") == 1

    # The same K from a retrained tokenizer (another hash): refused as well.
    config = read_json(trained / "vocoder" / "config.json")
    stage = read_json(trained / "vocoder" / "stage.json")
    write_json(trained / "vocoder" / "config.json", {**config, "tokenizer_hash": "0123456789abcdef"})
    # a vocoder that was trained so, its stage.json recording the file (loading checks its hash)
    write_json(trained / "vocoder" / "stage.json", {**stage, "files": {**stage["files"], "config.json": {
        "size": (trained / "vocoder" / "config.json").stat().st_size,
        "sha256": file_hash(trained / "vocoder" / "config.json")}}})
    try:
        assert tokenlm("decode", trained, clip, tmp_path / "x.wav", "--no-progress") == 1
        err = capsys.readouterr().err
        assert "0123456789abcdef" in err and "retrain" in err and err.count("\n") == 1
    finally:
        write_json(trained / "vocoder" / "config.json", config)
        write_json(trained / "vocoder" / "stage.json", stage)
    assert not (tmp_path / "x.wav").exists()

    class Other:  # samples per code differ
        sample_rate, samples_per_code, codebook_size = SR, 2 * SPC, K
        info = {"tokenizer_hash": config["tokenizer_hash"]}

    with pytest.raises(ArtifactError, match="samples per code 160"):
        Vocoder.load(trained / "vocoder").check_tokenizer(Other())


def test_missing_vocoder_and_lm_are_one_line_errors(run, clip, tmp_path, capsys):
    assert tokenlm("decode", run, clip, tmp_path / "x.wav") == 1
    err = capsys.readouterr().err
    assert "has no vocoder yet: run `tokenlm vocoder" in err and err.count("\n") == 1
    assert tokenlm("generate", run, tmp_path / "x.wav", "--prompt", clip) == 1
    assert "has no language model yet" in capsys.readouterr().err


def test_generate_continues_a_prompt(trained, clip, tmp_path):
    from tokenlm.models.gpt import LMConfig
    from tokenlm.pipeline.pretrain import pretrain

    pretrain(trained, LMConfig(n_layer=1, n_head=1, n_embd=16, context=32, dropout=0.0),
             TrainConfig(steps=3, batch_size=4, eval_every=3, warmup_steps=1, device="cpu"), k=K, progress=False)
    out = tmp_path / "gen.wav"
    assert tokenlm("generate", trained, out, "--prompt", clip, "--seconds", 0.1, "--top-k", 2, "--seed", 1,
                   "--device", "cpu", "--no-progress") == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["generated_codes"] == 5 and summary["primed"]
    n_codes = summary["prompt_codes"] + 5
    assert len(summary["codes"]) == n_codes
    audio, sr = sf.read(out, dtype="float32")
    assert sr == SR and len(audio) == n_codes * SPC
    # The prompt is teacher-forced: its audio comes back (mu-law and 16-bit quantised).
    wav = load_audio(clip, SR)
    assert summary["prompt_codes"] == len(AudioTokenizer.load(trained / "tokenizer").encode(wav, SR)) > 0
    prompt = wav[: summary["prompt_codes"] * SPC]
    expected = mu_law_decode(mu_law_encode(torch.from_numpy(prompt))).numpy()
    assert np.abs(audio[: len(prompt)] - expected).max() < 1e-3


def test_crops_are_code_aligned_and_mask_the_unseen_past():
    spc = 4
    codes = [np.arange(6), np.arange(10, 13)]
    audio = [np.repeat(c, spc).astype(np.uint8) for c in codes]  # sample value = its code
    data = AlignedAudio(codes, audio, ["a", "b"], spc)
    batches = CropBatches(data, crop_codes=3, receptive_field=5)
    rng_batch = batches(np.random.default_rng(0), 64)
    assert torch.equal(rng_batch[0], batches(np.random.default_rng(0), 64)[0])  # a function of the rng
    audio_q, code_b, targets = rng_batch
    assert audio_q.shape == (64, 12) and code_b.shape == (64, 3)
    assert torch.equal(audio_q, code_b.repeat_interleave(spc, dim=1))  # audio under its own code
    starts = {int(c[0]) for c in code_b}
    assert starts == {0, 1, 2, 3, 10}  # every (clip, start) pair is drawn
    for row in range(64):
        masked = (targets[row] == IGNORE).sum()
        assert masked == (0 if int(code_b[row, 0]) in (0, 10) else 5)


def test_distances_and_config():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(4000)).astype(np.float32)
    assert log_spectral_distance(x, x, 200, 80) == 0
    assert log_spectral_distance(x, 0.5 * x, 200, 80) == pytest.approx(20 * np.log10(2), rel=1e-4)
    a = torch.zeros(5, 3)
    assert logmel_distance_db(a, a + 2.0) == pytest.approx(2.0)
    cfg = vocoder_config(None, {"steps": 7, "crop_codes": 5, "cycles": 3})
    assert cfg.training.steps == 7 and cfg.crop_codes == 5 and cfg.model.cycles == 3
    assert cfg.training.batch_size == 8  # the vocoder's own default, not TrainConfig's
    assert cfg.wavenet(256, 800, 16000).dilations == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] * 3
    demo = vocoder_config(Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml")  # the shipped recipe parses
    assert demo.model.cycles * demo.model.layers_per_cycle == 16 and demo.training.steps <= 500
    longer = vocoder_config(Path(__file__).resolve().parents[2] / "recipes" / "vocoder.yaml")  # the demo's, trained longer
    assert longer.model.residual_channels == demo.model.residual_channels and longer.training.steps > demo.training.steps


def test_the_flat_recipe_section_nests_the_wavenet_config():
    cfg = VocoderConfig.from_section({"residual_channels": 16, "crop-codes": 4, "training": {"steps": 3}},
                                     {"cycles": 1, "lr": None, "seed": 2})
    assert cfg.model == WaveNetConfig(residual_channels=16, cycles=1) and cfg.crop_codes == 4
    assert (cfg.training.steps, cfg.training.seed, cfg.training.lr) == (3, 2, 1e-3)
    section = cfg.to_section()
    assert section["residual_channels"] == 16 and "model" not in section and "codebook_size" not in section
    assert VocoderConfig.from_section(section) == cfg
    # What the tokenizer fixes is not a recipe key.
    with pytest.raises(ConfigError, match=r"unknown option 'vocoder.codebook_size' .*known: .*residual_channels"):
        VocoderConfig.from_section({"codebook_size": 4})



@pytest.mark.parametrize("cache_mb", [0.0, 1.0])
def test_streamed_crops_equal_the_in_memory_crops(run, cache_mb):
    """The training crops read through the bounded cache (a cache too small for one clip, and
    one that holds them all) are the in-memory loading's crops for the same seed."""
    from tokenlm.data.store import RaggedSplit
    from tokenlm.models.wavenet import WaveNet
    from tokenlm.run.rundir import RunDir, read_tokens_meta
    from tokenlm.vocoder.training_data import StreamedAudio
    from tokenlm.vocoder.vocoder import network_signal

    tokens = read_tokens_meta(RunDir(run).tokens(K))
    split = RaggedSplit(tokens.directory, "train", "uint16")
    model = WaveNet(VocoderConfig.from_section({"lpc_order": 0}).wavenet(K, tokens.samples_per_code, tokens.sample_rate))
    usable = np.flatnonzero(split.lengths >= 2)
    signal = lambda wav, codes: network_signal(model, wav, codes)  # noqa: E731
    loaded = AlignedAudio.load(RunDir(run), split, usable, tokens.sample_rate, tokens.samples_per_code, 256, False,
                               signal=signal)
    streamed = StreamedAudio(RunDir(run), split, usable, tokens.sample_rate, tokens.samples_per_code, 256, cache_mb,
                             signal=signal)
    assert streamed.ids == loaded.ids and streamed.lengths.tolist() == loaded.lengths.tolist()
    for seed in (0, 1):
        a = CropBatches(loaded, crop_codes=2, receptive_field=5)(np.random.default_rng(seed), 16)
        b = CropBatches(streamed, crop_codes=2, receptive_field=5)(np.random.default_rng(seed), 16)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert streamed.cached_bytes <= cache_mb * 1e6 or len(streamed.cache) == 1  # bounded: one clip over it at most
    if cache_mb == 0.0:
        assert streamed.decoded > len(streamed.cache) == 1  # clips read again once evicted: the same crops
