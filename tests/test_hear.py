"""tokenlm.hear on a tiny finished run (tokenizer, LM, probe): the HEAR 2021 API's rules as
hearvalidator checks them (attributes, shapes, float32, regular timestamps), plus batch
independence, determinism, short and silent sounds, and one-line errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import sound

from tokenlm import hear
from tokenlm.core.config import build
from tokenlm.core.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.core.fileio import read_json
from tokenlm.models.gpt import LMConfig
from tokenlm.pipeline.pretrain import pretrain
from tokenlm.pipeline.probe import probe
from tokenlm.pipeline.probe_config import ProbeConfig
from tokenlm.pipeline.tokenize import fit_codebook_stage
from tokenlm.run.rundir import RunDir
from tokenlm.tokenizer.codebook import CodebookConfig
from tokenlm.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SR = 16000
N_LAYER = 2


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """tiny_run plus a 2-block LM (context 16: a 2 s sound of 40 codes needs sliding windows)
    and its probe."""
    run = tmp_path_factory.mktemp("hear") / "run"
    shutil.copytree(tiny_run, run)
    training = build(TrainConfig, {"steps": 2, "batch_size": 4, "eval_every": 2, "warmup_steps": 1, "device": "cpu"})
    pretrain(run, LMConfig(n_layer=N_LAYER, n_head=2, n_embd=16, context=16, dropout=0.0), training, progress=False)
    probe(run, ProbeConfig(cs=(1.0,)), device="cpu", progress=False)
    return run


@pytest.fixture(scope="module")
def model(run):
    return hear.load_model(str(run), device="cpu")


def batch(*sounds) -> torch.Tensor:
    """Sounds zero-padded at the end to the longest, as a harness batches them: (n, T)."""
    width = max(len(s) for s in sounds)
    return torch.stack([torch.from_numpy(np.pad(s, (0, width - len(s)))) for s in sounds])


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == SR == model.tokenizer.sample_rate
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    assert model.timestamp_embedding_size == model.scene_embedding_size == 16
    assert not model.training and not model.train().training  # stays in eval: no dropout


def test_timestamp_embeddings_follow_the_api(model):
    audio = batch(*(sound(kind, 2.0, seed=i) for i, kind in enumerate(("noise", "tone", "chirp"))))
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    code_rate = model.tokenizer.code_rate  # 20 codes/s
    assert embeddings.dtype == torch.float32 and embeddings.shape == (3, int(2.0 * code_rate), 16)
    assert timestamps.shape == embeddings.shape[:2]
    assert torch.isfinite(embeddings).all()
    # Patch centres: code i spans frames 5i..5i+4, centred on 10 ms * frame.
    assert timestamps[0, 0] == pytest.approx(20.0)
    steps = torch.diff(timestamps.double())
    assert torch.allclose(steps, torch.full_like(steps, 1000.0 / code_rate), atol=1e-3)
    assert (timestamps == timestamps[0]).all()


def test_scene_embeddings_are_the_pooled_timestamp_embeddings(model):
    audio = batch(sound("noise", 3.74, seed=1), sound("tone", 1.0, seed=2))
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (2, model.scene_embedding_size)
    embeddings, _ = hear.get_timestamp_embeddings(audio, model)
    assert torch.allclose(scene, embeddings.mean(dim=1), atol=1e-6)


def test_mean_std_pooling_doubles_the_scene_size(run):
    model = hear.load_model(str(run), pooling="mean+std", device="cpu")
    assert model.scene_embedding_size == 2 * model.timestamp_embedding_size
    scene = hear.get_scene_embeddings(batch(sound("chirp", 1.0)), model)
    embeddings, _ = hear.get_timestamp_embeddings(batch(sound("chirp", 1.0)), model)
    assert scene.shape == (1, 32)
    assert torch.allclose(scene[0, 16:], embeddings[0].std(dim=0, unbiased=False), atol=1e-6)


def test_a_sound_does_not_depend_on_its_batch(model, monkeypatch):
    long, short = sound("noise", 1.5, seed=3), sound("tone", 0.4, seed=4)
    alone, _ = hear.get_timestamp_embeddings(batch(long), model)
    together, _ = hear.get_timestamp_embeddings(batch(long, short, sound("chirp", 1.5, seed=5)), model)
    assert torch.allclose(alone[0], together[0], atol=1e-5)
    # The short sound as the harness padded it, alone: the same as in the batch.
    padded_alone, _ = hear.get_timestamp_embeddings(batch(short, np.zeros(len(long), np.float32))[:1], model)
    assert torch.allclose(padded_alone[0], together[1], atol=1e-5)
    # Sounds split over several LM calls give what one call gives.
    monkeypatch.setattr(hear, "CODES_PER_CALL", 1)
    one_per_call = hear.get_scene_embeddings(batch(long, short), model)
    monkeypatch.undo()
    assert torch.allclose(one_per_call, hear.get_scene_embeddings(batch(long, short), model), atol=1e-5)


def test_multichannel_sounds_are_their_channel_mean(model):
    left, right = sound("tone", 1.0, seed=1), sound("chirp", 1.0, seed=2)
    mono = hear.get_scene_embeddings(batch(np.float32(0.5) * (left + right)), model)
    channels_first = torch.from_numpy(np.stack([left, right]))[None]  # (1, 2, T)
    assert torch.allclose(hear.get_scene_embeddings(channels_first, model), mono, atol=1e-5)
    assert torch.allclose(hear.get_scene_embeddings(channels_first.transpose(1, 2), model), mono, atol=1e-5)
    with pytest.raises(ConfigError, match="ambiguous"):
        hear.get_scene_embeddings(torch.zeros(1, 4, 8), model)


def test_deterministic(model):
    audio = batch(sound("chirp", 1.0, seed=6), sound("noise", 1.0, seed=7))
    assert torch.equal(hear.get_scene_embeddings(audio, model), hear.get_scene_embeddings(audio, model))


@pytest.mark.parametrize("n_samples", [1, 100, 799])
def test_shorter_than_one_patch_gives_one_code(model, n_samples):
    audio = torch.from_numpy(sound("noise", 1.0)[:n_samples]).reshape(1, -1)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert embeddings.shape == (1, 1, 16) and timestamps.shape == (1, 1)
    assert torch.isfinite(hear.get_scene_embeddings(audio, model)).all()


def test_silence_is_a_sound_like_any_other(model):
    scene = hear.get_scene_embeddings(torch.zeros(2, SR), model)  # the tokenizer's encode() refuses silence
    assert torch.isfinite(scene).all() and torch.equal(scene[0], scene[1])


def test_default_layer_is_the_probes_choice(run, model, tmp_path):
    best = next(row for row in read_json(run / "probe" / "corpus" / "results.json")["rows"] if row["name"] == "lm_best")
    assert model.layer == int(best["layer"].removeprefix("lm_layer_"))
    assert hear.load_model(str(run), layer=2, device="cpu").layer == 2
    # Without a probe of this LM: the middle block.
    unprobed = tmp_path / "run"
    shutil.copytree(run, unprobed)
    shutil.rmtree(RunDir(unprobed).probe)
    assert hear.load_model(str(unprobed), device="cpu").layer == (N_LAYER + 1) // 2


def test_codebook_size_picks_the_lm_of_that_k(run):
    assert hear.load_model(str(run), codebook_size=8, device="cpu").tokenizer.codebook_size == 8
    with pytest.raises(ArtifactError, match="no LM trained on K=16"):
        hear.load_model(str(run), codebook_size=16, device="cpu")


def test_an_lm_of_another_tokenizers_codes_is_refused(run, tmp_path):
    refitted = tmp_path / "run"
    shutil.copytree(run, refitted)
    fit_codebook_stage(refitted, 8, CodebookConfig(niter=2, seed=1, gpu="never"), device=torch.device("cpu"))
    with pytest.raises(ArtifactError, match="trained on codes of another tokenizer"):
        hear.load_model(str(refitted), device="cpu")


@pytest.mark.parametrize("path, kwargs, match", [
    ("{tmp}/missing", {}, "no such run directory"),
    ("{tmp}", {}, "no language model"),
    ("", {}, "needs a tokenlm run directory"),
    ("{run}", {"layer": N_LAYER + 1}, "layer must be an integer in 0..2"),
    ("{run}", {"pooling": "max"}, "pooling must be one of"),
    ("{run}", {"colour": "red"}, "unknown options colour"),
])
def test_bad_model_options_are_one_line_errors(run, tmp_path, path, kwargs, match):
    with pytest.raises(TokenlmError, match=match) as err:
        hear.load_model(path.format(tmp=tmp_path, run=run), device="cpu", **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("audio, match", [
    (torch.zeros(SR), "shape"),
    (torch.zeros(2, 0), "shape"),
    (torch.zeros(1, SR, dtype=torch.int16), "dtype"),
    (torch.full((1, SR), float("nan")), "not finite"),
])
def test_bad_audio_is_a_one_line_error(model, audio, match):
    with pytest.raises(ConfigError, match=match):
        hear.get_timestamp_embeddings(audio, model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_embeddings(run, model):
    audio = batch(sound("chirp", 1.0), sound("noise", 0.5))
    on_gpu = hear.load_model(str(run), device="cuda")
    embeddings, timestamps = hear.get_timestamp_embeddings(audio.cuda(), on_gpu)
    assert embeddings.device.type == "cuda" and timestamps.device.type == "cuda"
    assert torch.allclose(embeddings.cpu(), hear.get_timestamp_embeddings(audio, model)[0], atol=1e-4)
    moved = hear.load_model(str(run), device="cpu").to("cuda")  # what hear-eval-kit does
    assert torch.allclose(hear.get_scene_embeddings(audio.cuda(), moved).cpu(),
                          hear.get_scene_embeddings(audio, model), atol=1e-4)
