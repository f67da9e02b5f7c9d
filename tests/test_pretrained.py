"""save_pretrained / from_pretrained and `tokenlm publish`: a finished run's tokenizer, LM and
vocoder as one folder that loads without the run and gives the same codes, the same LM logits
and the same vocoder audio; its model card names the recipe and the scores."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.conftest import run_cli, sound
from tokenlm.core.config import build
from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import read_json
from tokenlm.models.gpt import LMConfig
from tokenlm.models.wavenet import WaveNetConfig
from tokenlm.pipeline.pretrain import pretrain
from tokenlm.pipeline.pretrained import PretrainedModel
from tokenlm.pipeline.probe import probe
from tokenlm.pipeline.probe_config import ProbeConfig
from tokenlm.pipeline.vocoder import VocoderConfig, train_vocoder
from tokenlm.run.rundir import RunDir
from tokenlm.tokenizer.published import load_tokenizer, tokenizer_from_pretrained
from tokenlm.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SR = 16000
RECIPE = "# made by tokenlm run\nlm: {n_layer: 2, n_head: 2, n_embd: 16}\n"


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """tiny_run with a 2-block LM, its probe, a 3-layer vocoder and a saved recipe."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    shutil.copytree(tiny_run, run)
    training = build(TrainConfig, {"steps": 2, "batch_size": 4, "eval_every": 2, "warmup_steps": 1, "device": "cpu"})
    pretrain(run, LMConfig(n_layer=2, n_head=2, n_embd=16, context=16, dropout=0.0), training, progress=False)
    probe(run, ProbeConfig(cs=(1.0,)), device="cpu", progress=False)
    vocoder = VocoderConfig(
        model=WaveNetConfig(layers_per_cycle=3, cycles=1, residual_channels=8, gate_channels=8, skip_channels=8,
                            cond_channels=8),
        crop_codes=2, val_crops=2, metrics_clips=1, metrics_seconds=0.1,
        training=TrainConfig(steps=2, batch_size=2, lr=3e-3, warmup_steps=1, eval_every=2, log_every=1, device="cpu"))
    train_vocoder(run, vocoder, device="cpu", progress=False)
    (run / "recipe.yaml").write_text(RECIPE)
    return RunDir(run)


@pytest.fixture(scope="module")
def published(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("published") / "model"
    assert run_cli("publish", run.root, "--out", out) == 0
    return out


def test_round_trip_gives_the_same_codes_logits_and_audio(run, published, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(published, moved)  # no path back into the run is needed
    original = PretrainedModel.from_run(run, device="cpu")
    loaded = PretrainedModel.from_pretrained(moved, device="cpu")
    assert loaded.lm is not None and loaded.vocoder is not None
    wav = sound("chirp", 1.0, seed=3)
    codes = original.tokenizer.encode(wav, SR)
    assert torch.equal(loaded.tokenizer.encode(wav, SR), codes)
    ids = torch.cat([torch.tensor([original.lm.bos]), codes[:12]])[None]  # within the context of 16
    with torch.no_grad():
        expected = original.lm.model(input_ids=ids).logits
        assert torch.equal(loaded.lm.model(input_ids=ids).logits, expected)
    np.testing.assert_array_equal(loaded.decode_audio(codes[:4].numpy(), seed=7),
                                  original.vocoder.resynthesise(codes[:4].numpy(), seed=7))
    # the tokenizer alone, as tokenize --tokenizer loads it
    assert torch.equal(load_tokenizer(moved).encode(wav, SR), codes)
    assert torch.equal(tokenizer_from_pretrained(moved).encode(wav, SR), codes)


def test_the_card_names_the_recipe_and_the_scores(run, published):
    card = (published / "README.md").read_text()
    assert "lm: {n_layer: 2, n_head: 2, n_embd: 16}" in card and (published / "recipe.yaml").read_text() == RECIPE
    table = (run.probe / "corpus" / "report.md").read_text().strip()  # one task: its table
    assert table in card and "% [" in table  # the probe table, with its intervals
    ppl = read_json(run.lm / "metrics.json")["val_ppl"]
    assert f"val_ppl {ppl:.4g}" in card
    mrstft = read_json(run.vocoder / "metrics.json")["vocoder_mrstft"]
    assert f"vocoder_mrstft {mrstft:.4g}" in card
    assert "torch " in card and "K=8" in card
    config = read_json(published / "lm" / "config.json")
    assert config["tokenlm"]["tokenizer_dir"] is None  # nothing points into the run folder
    assert str(run.root) not in card.replace(run.root.name, "")


def test_publish_is_atomic_and_never_replaces_a_folder_it_did_not_write(run, published, tmp_path, capsys):
    before = read_json(published / "tokenlm.json")
    assert run_cli("publish", run.root, "--out", published) == 0  # its own folder: replaced
    assert read_json(published / "tokenlm.json") == before  # same run, same files (same bytes)
    assert not list(published.parent.glob(".model.*"))  # no temporary folder left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert run_cli("publish", run.root, "--out", mine) == 1
    assert "not a folder tokenlm publish wrote" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep"
    assert run_cli("publish", tmp_path / "no_run", "--out", tmp_path / "x") == 1
    assert "no such run folder" in capsys.readouterr().err


def test_a_damaged_folder_is_refused_in_one_line(published, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(published, copy)
    weights = copy / "lm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="not the file the folder was saved with"):
        PretrainedModel.from_pretrained(copy)
    with pytest.raises(ArtifactError, match="not a tokenlm pretrained folder"):
        PretrainedModel.from_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="no such folder"):
        PretrainedModel.from_pretrained(tmp_path / "nope" / "deeper")


def test_units_of_a_folder_with_the_published_model(published, tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    import soundfile as sf

    for i in range(2):
        sf.write(folder / f"c{i}.wav", np.stack([sound("tone", 1.0, seed=i)] * 2, axis=1), SR)  # stereo files
    assert run_cli("tokenize", tmp_path / "out", "--tokenizer", published, "--data", folder) == 0
    assert run_cli("export", tmp_path / "out", "--format", "units") == 0
    lines = (tmp_path / "out" / "export" / "units" / "k8" / "all.units").read_text().splitlines()
    assert [line.split("|")[0] for line in lines] == ["c0", "c1"]
    assert len(lines[0].split("|")[1].split()) == 20
