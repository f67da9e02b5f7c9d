"""Runs as people run them: recipe overrides, --out and the saved recipe; checkpoints without
pickles, deleted when their stage finishes unless kept; stage.json's versions; the public API;
progress lines in logs; trackers."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import run_cli as tokenlm
from tests.conftest import write_corpus
from tokenlm.core.errors import ConfigError, TokenlmError
from tokenlm.core.fileio import read_json
from tokenlm.core.overrides import apply_overrides
from tokenlm.run.artifacts import STAGE_FILE, Stage, keeping_checkpoints, stage_key
from tokenlm.training import TrainConfig, load_checkpoint, save_checkpoint, train
from tokenlm.training.checkpoint import remove_partial_writes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- overrides ---------------------------------------------------------------------------------

def test_overrides_change_exactly_the_keys_they_name():
    recipe = {"run": {"dir": "runs/a"}, "lm": {"n_layer": 4, "training": {"steps": 2000, "lr": 0.001}},
              "probe": {"baselines": ["vgg", "simclr"]}}
    out = apply_overrides(recipe, ["lm.training.steps=50", "probe.baselines=[vgg]", "vocoder.training.lr=0.0003",
                                   "lm.attn=sdpa"])
    assert out == {"run": {"dir": "runs/a"},
                   "lm": {"n_layer": 4, "training": {"steps": 50, "lr": 0.001}, "attn": "sdpa"},
                   "probe": {"baselines": ["vgg"]}, "vocoder": {"training": {"lr": 3e-4}}}
    assert recipe["lm"]["training"]["steps"] == 2000  # the recipe itself is left alone


@pytest.mark.parametrize("bad, words", [("lmm.steps=3", "unknown section 'lmm'"), ("lm.training.steps", "key=value"),
                                        ("lm.n_layer.x=1", "'lm.n_layer' is 4")])
def test_a_bad_override_is_one_line(bad, words):
    with pytest.raises(ConfigError, match=words) as err:
        apply_overrides({"lm": {"n_layer": 4}}, [bad])
    assert "\n" not in str(err.value)


TINY = {
    "features": {"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 32, "patch_frames": 2},
    "tokenizer": {"codebook_size": 8, "autoencoder": {"hidden": [32, 16], "bottleneck": 8},
                  "training": {"epochs": 1, "batch_size": 64}},
    "codebook": {"niter": 5},
    "lm": {"n_layer": 1, "n_head": 2, "n_embd": 16, "context": 32,
           "training": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "log_every": 1}},
    "stages": ["prepare", "tokenize", "pretrain"],
}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A recipe run with overrides and --out: (recipe, run folder)."""
    root = tmp_path_factory.mktemp("runs")
    corpus = write_corpus(root / "corpus", labels=2, groups=2, clips=2, seconds=0.5, sample_rate=8000)
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"run": {"dir": str(root / "elsewhere"), "device": "cpu"},
                                      "data": {"path": str(corpus)}, **TINY}))
    assert tokenlm("run", recipe, "lm.training.steps=2", "lm.training.eval_every=1", "--out", root / "run") == 0
    return recipe, root / "run"


@pytest.mark.parametrize("extra, words", [
    (("sweep.lm_stpes=5",), "unknown option 'sweep.lm_stpes' in section 'sweep' (did you mean 'lm_steps'?"),
    (("lm.n_layr=2",), "unknown option 'lm.n_layr' in section 'lm' (did you mean 'n_layer'?"),
    (("vocoder.training.setps=5",), "unknown option 'vocoder.training.setps' in section 'vocoder.training' "
                                    "(did you mean 'steps'?"),
    (("probe.baseline=[vgg]",), "did you mean 'baselines'?"),
    (("data.strickt=true",), "unknown option 'data.strickt' in section 'data' (did you mean 'strict'?"),
    (("sweep.lm_steps=many",), "option 'sweep.lm_steps' takes a number"),
])
def test_a_typo_in_the_last_stages_section_stops_run_before_the_first_stage(tmp_path, capsys, extra, words):
    corpus = write_corpus(tmp_path / "corpus", labels=2, groups=2, clips=2, seconds=0.5, sample_rate=8000)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"run": {"device": "cpu"}, "data": {"path": str(corpus)},
                                      **{**TINY, "stages": ["prepare", "tokenize", "pretrain", "sweep"]}}))
    assert tokenlm("run", recipe, *extra, "--out", tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # nothing prepared, nothing saved


def test_a_misspelt_section_in_the_recipe_names_the_nearest(tmp_path):
    from tokenlm.pipeline.recipe_check import check_recipe

    with pytest.raises(ConfigError, match="unknown section 'vocodr' \\(did you mean 'vocoder'\\?"):
        check_recipe({"vocodr": {"steps": 3}})
    with pytest.raises(ConfigError, match="tasks.pitch.*did you mean 'path'"):
        check_recipe({"tasks": {"pitch": {"pth": "data/pitch"}}})
    with pytest.raises(ConfigError, match="unknown option 'lm.n_heads'.*did you mean 'n_head'"):
        check_recipe({"lm": {"n_layer": 2}, "levers": {"wide": {"n_heads": 8}}})


def test_run_takes_overrides_and_out_and_saves_the_recipe_as_run(short_run):
    recipe, run = short_run
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["run"]["dir"] == str(run.resolve())
    assert saved["lm"]["training"] == {**TINY["lm"]["training"], "steps": 2, "eval_every": 1}
    assert read_json(run / "lm" / STAGE_FILE)["config"]["training"]["steps"] == 2
    assert not (recipe.parent / "elsewhere").exists()
    assert not (run / "lm" / "ckpt").exists()  # deleted when the stage finished


def test_the_saved_recipe_reproduces_the_run(short_run, capsys):
    _, run = short_run
    keys = {name: stage_key(run / name) for name in ("features", "lm")}
    capsys.readouterr()
    assert tokenlm("run", run / "recipe.yaml") == 0
    err = capsys.readouterr().err
    assert "lm up to date" in err and "features up to date" in err
    assert {name: stage_key(run / name) for name in keys} == keys


def test_an_override_rebuilds_only_the_stages_it_changes(short_run, capsys):
    _, run = short_run
    features, lm = stage_key(run / "features"), stage_key(run / "lm")
    assert tokenlm("run", run / "recipe.yaml", "lm.training.steps=3", "--keep-checkpoints") == 0
    assert stage_key(run / "features") == features and stage_key(run / "lm") != lm
    assert read_json(run / "lm" / STAGE_FILE)["config"]["training"]["steps"] == 3
    assert (run / "lm" / "ckpt" / "last.json").is_file()  # kept this time
    assert tokenlm("run", run / "recipe.yaml", "bogus.x=1") == 1
    assert "unknown section 'bogus'" in capsys.readouterr().err


def test_run_help_shows_its_defaults_one_way(capsys):
    assert tokenlm("run", "--help") == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--out", "--stages", "--device", "--keep-checkpoints", "--log-to"):
        assert option in out
    assert out.count("[") >= 5 and "(default" not in out


# ---- checkpoints ---------------------------------------------------------------------------------

def test_checkpoints_are_safetensors_and_json_and_load_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7,
                     "best": float("nan")}, tmp_path / "last.json")
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 8},
                    tmp_path / "last.json")  # replaces the first: one tensors file left
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".safetensors") and files[1] == "last.json"
    state = json.loads((tmp_path / "last.json").read_text())
    assert state["state"]["step"] == 8 and state["tensors"] == files[0]
    loaded = load_checkpoint(tmp_path / "last.json")
    assert all(torch.equal(v, loaded["model"][k]) for k, v in model.state_dict().items())
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(loaded["optimizer"])  # int keys of the optimiser state survive JSON
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    (tmp_path / "last-orphan.safetensors").write_bytes(b"x")  # written, then killed before its state file
    remove_partial_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_a_finished_stage_drops_its_checkpoints_unless_kept(tmp_path):
    for keep in (False, True):
        stage = Stage(tmp_path / f"keep{keep}", {"k": 1})
        work = stage.start()
        (work / "model.safetensors").write_bytes(b"m")
        (work / "ckpt").mkdir()
        (work / "ckpt" / "last.json").write_text("{}")
        with keeping_checkpoints(keep):
            stage.finish()
        assert (stage.out_dir / "ckpt").exists() == keep
        assert ("ckpt/last.json" in read_json(stage.out_dir / STAGE_FILE)["files"]) == keep


def test_stage_json_records_the_versions_that_change_results(tmp_path):
    stage = Stage(tmp_path / "thing", {"k": 1})
    stage.start()
    versions = read_json(stage.finish() / STAGE_FILE)["versions"]
    for name in ("tokenlm", "python", "numpy", "torch", "transformers", "scikit-learn", "soundfile", "soxr"):
        assert versions[name], name
    assert any(name.startswith("faiss") for name in versions)
    rev = versions["tokenlm_git"]  # these tests run from a git checkout
    assert rev is None or len(rev) == 40


# ---- the public API ---------------------------------------------------------------------------------

def test_the_public_api_imports_from_the_package(tiny_run):
    import tokenlm
    from tokenlm import AudioTokenizer, CodeLM, RunDir, hear, load_audio  # noqa: F401

    assert hear.load_model and RunDir(tiny_run).tokenizer.is_dir()
    assert "AudioTokenizer" in dir(tokenlm)
    with pytest.raises(AttributeError):
        tokenlm.NoSuchThing  # noqa: B018


def test_decode_audio_without_a_vocoder_reconstructs_the_phase(tiny_run):
    from tokenlm import AudioTokenizer, decode_audio

    tokenizer = AudioTokenizer.load(tiny_run / "tokenizer")
    codes = torch.tensor([0, 1, 2, 3, 4])
    audio = decode_audio(tokenizer, codes)
    assert audio.dtype == np.float32 and len(audio) == 5 * tokenizer.samples_per_code
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert np.array_equal(audio, decode_audio(tokenizer, codes))  # seeded


# ---- progress and trackers ------------------------------------------------------------------------

def test_progress_off_a_terminal_prints_plain_lines(monkeypatch):
    from tokenlm.core.progress import progress_bar

    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    for _ in progress_bar(range(5), desc="encode", unit="clip"):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert "encode: 5/5 clip" in text.splitlines()[-1]


def _train_with_trackers(tmp_path, log_to):
    from tokenlm.core.tracking import logging_to

    model = torch.nn.Linear(2, 1)
    cfg = TrainConfig(steps=4, batch_size=4, eval_every=2, log_every=1, warmup_steps=0, device="cpu")
    with logging_to(log_to):
        train(model, cfg, tmp_path, loss_fn=lambda m, b: m(b).pow(2).mean(),
              train_batch=lambda rng, n: torch.from_numpy(rng.standard_normal((n, 2)).astype(np.float32)),
              progress=False, desc="tiny")


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracker_names_its_extra(tracker, tmp_path):
    try:
        __import__(tracker)
        pytest.skip(f"{tracker} is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=rf"pip install 'tokenlm\[{tracker}\]'"):
        _train_with_trackers(tmp_path, tracker)


def test_tensorboard_gets_the_rows_of_train_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train_with_trackers(tmp_path, "tensorboard")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("tiny/loss")] == [1, 2, 3, 4]


def test_an_unknown_tracker_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker neptune"):
        _train_with_trackers(tmp_path, "neptune")


def test_the_lm_names_its_tokenizer_and_forwards_without_the_loss_warning(short_run):
    from tokenlm import AudioTokenizer, CodeLM

    _, run = short_run
    config = read_json(run / "lm" / "config.json")["tokenlm"]
    tokenizer = AudioTokenizer.load(run / "tokenizer")
    assert config["tokenizer_dir"] == str((run / "tokenizer").resolve())
    assert config["tokenizer_hash"] == tokenizer.info["tokenizer_hash"]
    # transformers looks the loss up by the model's loss_type: unset, it warned at every forward
    assert CodeLM.load(run / "lm").model.loss_type == "ForCausalLM"


def test_lm_rows_count_the_flops_of_one_second_of_codes(short_run):
    from tokenlm import CodeLM
    from tokenlm.evaluation.representations import lm_flops_per_second

    lm = CodeLM.load(short_run[1] / "lm")
    n, d = min(round(lm.code_rate) + 1, lm.context), 16  # TINY's LM: one block of width 16
    matmuls = 2 * n * 12 * d * d  # qkv, projection and the 4x MLP: 12 d^2 per code
    attention = 2 * 2 * n * n * d  # scores and mixing
    assert lm_flops_per_second(lm, lm.code_rate) == matmuls + attention
    assert lm.model.config._attn_implementation == "sdpa"  # left as it was
    assert lm_flops_per_second(lm, None) is None


def test_every_command_takes_the_run_folder_as_its_argument_and_the_old_out_still_works(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", labels=2, groups=2, clips=2, seconds=0.5, sample_rate=8000)
    assert tokenlm("prepare", tmp_path / "new", "--data", corpus) == 0
    assert (tmp_path / "new" / "features" / STAGE_FILE).is_file()
    assert tokenlm("prepare", "--data", corpus, "--out", tmp_path / "old") == 0  # the older spelling
    assert (tmp_path / "old" / "features" / STAGE_FILE).is_file()
    assert tokenlm("prepare", tmp_path / "a", "--data", corpus, "--out", tmp_path / "b") == 1
    assert "two run folders" in capsys.readouterr().err


def test_help_shows_defaults_one_way_everywhere(capsys):
    from tokenlm.pipeline.registry import STAGES

    commands = [[spec.name] for spec in STAGES if spec.name != "data"] + [["data", "demo"], ["data", "corpus"]]
    for command in commands:
        assert tokenlm(*command, "--help") == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "(default" not in out and "[default:" not in out, command


def test_a_missing_extra_is_one_line_naming_it_before_any_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if tokenlm[report] were not installed
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"run": {"device": "cpu"}, "data": {"path": str(tmp_path / "none")}, **TINY}))
    assert tokenlm("run", recipe, "--out", tmp_path / "run") == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("needs matplotlib: pip install 'tokenlm[report]'") and "\n" not in err
    assert not (tmp_path / "run").exists()
    from tokenlm.demo.instruments import import_tinysoundfont

    monkeypatch.setitem(sys.modules, "tinysoundfont", None)
    with pytest.raises(TokenlmError, match="make demo-renderer"):
        import_tinysoundfont()
