"""Fault injection for bad values, damaged artifacts and the machine's errors (issue 11, items
5 training half, 6 config-validation half, 10): each case ends in one line that names the
file or the option and the reason, never a traceback, a wrong "interrupted" or NaN weights."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import run_cli, write_corpus
from tokenlm.core.config import build
from tokenlm.core.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.core.fileio import read_json, write_json
from tokenlm.data.features import FeatureConfig
from tokenlm.data.store import RaggedSplit, RaggedWriter
from tokenlm.lm.code_lm import CodeLM
from tokenlm.models.gpt import LMConfig, build_gpt2
from tokenlm.models.wavenet import WaveNet, WaveNetConfig
from tokenlm.pipeline.generate_codes import read_prompt_codes
from tokenlm.pipeline.prepare import prepare
from tokenlm.pipeline.probe_config import configs as probe_configs
from tokenlm.run.artifacts import STAGE_FILE, record_outputs
from tokenlm.run.rundir import AUTOENCODER_WEIGHTS, CODEBOOK, CONFIG, META, MODEL_WEIGHTS, WAVENET_WEIGHTS
from tokenlm.tokenizer.codebook import CodebookConfig, fit_codebook
from tokenlm.tokenizer.tokenizer import AudioTokenizer
from tokenlm.training import TrainConfig, train
from tokenlm.vocoder.vocoder import Vocoder, save_vocoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_K = 8  # the tiny run's codebook
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A private copy of the session's tiny run (features, tokenizer, K=8 codebook, tokens)."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def one_error_line(err: str) -> str:
    """The last line of stderr, checked to be the CLI's one-line error (no traceback above it)."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    return line


# ---- item 5, training half: no finite loss / metric ------------------------------------------

def _toy_train(tmp_path, *, batch_value=None, evaluations=None):
    """The shared loop on a linear model: batches of ones (or ``batch_value``), and an
    evaluation returning ``evaluations`` in turn."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    values = iter(evaluations or [])

    def batch(rng, size):
        x = torch.full((size, 2), 1.0 if batch_value is None else batch_value)
        return x, torch.zeros(size, 1)

    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-2, warmup_steps=0, eval_every=1, log_every=1, patience=0,
                      device="cpu")
    return train(model, cfg, tmp_path, loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
                 train_batch=batch, evaluate=(lambda m: {"score": next(values)}) if evaluations else None,
                 monitor="score", progress=False)


def test_non_finite_training_data_says_so_not_lower_the_learning_rate(tmp_path):
    with pytest.raises(ArtifactError, match="step 1 holds NaN or infinite values") as err:
        _toy_train(tmp_path, batch_value=float("nan"))
    assert "learning rate" not in str(err.value)


def test_no_finite_evaluation_is_an_error_not_nan_weights(tmp_path):
    nan = float("nan")
    with pytest.raises(ArtifactError, match="no evaluation in 4 steps gave a finite score"):
        _toy_train(tmp_path, evaluations=[nan, nan, float("inf"), nan])


def test_a_nan_evaluation_never_becomes_the_best(tmp_path):
    result = _toy_train(tmp_path, evaluations=[float("nan"), 3.0, 2.0, 5.0])
    assert result.best_step == 3 and result.best_value == 2.0


def test_tokenize_on_non_finite_normalisation_fails_in_one_line(run, capsys):
    """Item 5's run: features whose statistics went NaN (a log-mel overflowed) used to end in
    a traceback; now the autoencoder's first step says the data is not finite."""
    meta = read_json(run / "features" / META)
    meta["norm"]["mean"][0] = float("nan")
    write_json(run / "features" / META, meta)
    rerecord(run / "features")
    # --epochs 1: another autoencoder config, so the stage trains instead of being up to date
    code = run_cli("tokenize", "--out", run, "-K", TINY_K, "--epochs", 1, "--device", "cpu")
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "NaN or infinite" in line and "learning rate" not in line


# ---- item 6, config validation: tokenizer ----------------------------------------------------

def rerecord(stage_dir: Path) -> None:
    """Make a stage's file records match its edited files, as if the stage had written them
    so: these tests reach the loaders' validation, past the size check of stage.json."""
    stage = read_json(stage_dir / STAGE_FILE)
    write_json(stage_dir / STAGE_FILE, {**stage, "files": record_outputs(stage_dir)})


def _edit_config(run: Path, edit) -> Path:
    path = run / "tokenizer" / CONFIG
    config = read_json(path)
    edit(config)
    write_json(path, config)
    rerecord(path.parent)
    return path


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c["features"].update(sample_rate=22050), "disagrees with the features it was trained on"),
    (lambda c: c["norm"].update(mean=c["norm"]["mean"][:-1]), "norm.mean has shape"),
    (lambda c: c["norm"]["std"].__setitem__(3, 0.0), "norm.std has values <= 0"),
    (lambda c: c["features"].update(colour="blue"), "unknown option 'features.colour'"),
    (lambda c: c["features"].update(n_mels=64.5), "takes an integer"),
    (lambda c: c.pop("norm"), "no norm section"),
], ids=["sample-rate", "norm-length", "zero-std", "unknown-key", "wrong-type", "no-norm"])
def test_tokenizer_config_is_validated_on_load(run, edit, reason):
    path = _edit_config(run, edit)
    with pytest.raises(ArtifactError, match=reason) as err:
        AudioTokenizer.load(run / "tokenizer")
    assert str(path) in str(err.value)


def test_tokenizer_weights_that_do_not_fit_or_are_truncated(run):
    _edit_config(run, lambda c: c["autoencoder"].update(bottleneck=16))
    with pytest.raises(ArtifactError, match=AUTOENCODER_WEIGHTS):
        AudioTokenizer.load(run / "tokenizer")
    _edit_config(run, lambda c: c["autoencoder"].update(bottleneck=8))
    weights = run / "tokenizer" / AUTOENCODER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    rerecord(weights.parent)
    with pytest.raises(ArtifactError, match="cannot load the autoencoder"):
        AudioTokenizer.load(run / "tokenizer")


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(b""), "not a readable codebook"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable codebook"),
    (lambda p: np.save(p, np.zeros((4, 8), np.float32)), "4 centroids in the folder of K=8"),
    (lambda p: np.save(p, np.zeros((1, 8), np.float32)), "1 centroids"),
    (lambda p: np.save(p, np.zeros((8, 8), np.int64)), "dtype int64"),
    (lambda p: np.save(p, np.full((8, 8), np.nan, np.float32)), "not finite"),
], ids=["empty", "truncated", "wrong-k", "one-code", "int-dtype", "nan"])
def test_damaged_codebook_is_an_artifact_error(run, damage, reason):
    path = run / "tokenizer" / f"k{TINY_K}" / CODEBOOK
    damage(path)
    with pytest.raises(ArtifactError, match=reason) as err:
        AudioTokenizer.load(run / "tokenizer", codebook_size=TINY_K)
    assert str(path) in str(err.value)


def test_empty_codebook_on_the_command_line_is_no_interruption(run, tiny_run, tmp_path, capsys):
    (run / "tokenizer" / f"k{TINY_K}" / CODEBOOK).write_bytes(b"")
    code = run_cli("tokenize", "--tokenizer", run / "tokenizer", "--data", tiny_run.parent / "corpus",
                   "--out", tmp_path / "new", "--device", "cpu")
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and CODEBOOK in line and "interrupted" not in line


# ---- item 6, config validation: vocoder and LM -----------------------------------------------

@pytest.fixture
def vocoder_dir(tmp_path) -> Path:
    config = WaveNetConfig(layers_per_cycle=2, cycles=1, residual_channels=4, gate_channels=4, skip_channels=4,
                           cond_channels=4, codebook_size=TINY_K, samples_per_code=800)
    directory = tmp_path / "vocoder"
    directory.mkdir()
    save_vocoder(WaveNet(config), directory, {"sample_rate": config.sample_rate, "samples_per_code": 800,
                                              "codebook_size": TINY_K, "tokenizer_hash": "abc"})
    return directory


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c["wavenet"].update(colour="blue"), "unknown option 'wavenet.colour'"),
    (lambda c: c.update(codebook_size="8"), "codebook_size must be a positive integer"),
    (lambda c: c.update(sample_rate=8000), "disagree with its wavenet section"),
], ids=["unknown-key", "string-k", "sample-rate"])
def test_vocoder_config_is_validated_on_load(vocoder_dir, edit, reason):
    Vocoder.load(vocoder_dir)  # as saved, it loads
    config = read_json(vocoder_dir / CONFIG)
    edit(config)
    write_json(vocoder_dir / CONFIG, config)
    with pytest.raises(ArtifactError, match=reason) as err:
        Vocoder.load(vocoder_dir)
    assert str(vocoder_dir / CONFIG) in str(err.value)


def test_truncated_vocoder_weights_are_an_artifact_error(vocoder_dir):
    weights = vocoder_dir / WAVENET_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ArtifactError, match=WAVENET_WEIGHTS):
        Vocoder.load(vocoder_dir)


@pytest.mark.parametrize("section, reason", [
    ({"codebook_size": 8.5, "bos_token_id": 8}, "codebook_size must be an integer"),
    ({"codebook_size": 20, "bos_token_id": 20}, "do not fit the model's vocabulary of 9 ids"),
    ({"codebook_size": 8, "bos_token_id": 3}, "do not fit"),
], ids=["float-k", "k-beyond-vocabulary", "bos-among-codes"])
def test_lm_vocabulary_is_validated_on_load(tmp_path, section, reason):
    lm_dir = tmp_path / "lm"
    build_gpt2(LMConfig(n_layer=1, n_head=1, n_embd=8, context=8), TINY_K).save_pretrained(lm_dir)
    CodeLM.load(lm_dir, device="cpu")  # as saved, it loads
    config = read_json(lm_dir / CONFIG)
    config["tokenlm"].update(section)
    write_json(lm_dir / CONFIG, config)
    with pytest.raises(ArtifactError, match=reason):
        CodeLM.load(lm_dir, device="cpu")
    assert (lm_dir / MODEL_WEIGHTS).is_file()


def test_recipe_options_are_type_checked():
    with pytest.raises(ConfigError, match="'features.n_mels' takes an integer, got 64.5"):
        build(FeatureConfig, {"n_mels": 64.5}, where="features")
    with pytest.raises(ConfigError, match="'training.lr' takes a number, got"):
        build(TrainConfig, {"lr": [0.1]}, where="training")
    with pytest.raises(ConfigError, match="takes an integer, got True"):
        build(TrainConfig, {"steps": True})
    assert build(FeatureConfig, {"f_min": 50}).f_min == 50.0  # an int where a float goes is fine
    assert probe_configs({"layers": [0, 2]})[0].layers == "0,2"  # text options parse their own forms


# ---- item 10: one line instead of a traceback ------------------------------------------------

@pytest.mark.parametrize("k, reason", [
    (0, "from 2 to 65535"), (-3, "from 2 to 65535"), (70000, "from 2 to 65535"),
    (5000, "cannot fit 5000 codes on"),
])
def test_bad_codebook_sizes_are_one_line(run, k, reason, capsys):
    code = run_cli("tokenize", "--out", run, "-K", k, "--device", "cpu")
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and reason in line


def test_codebook_refuses_non_finite_vectors():
    vectors = np.zeros((40, 2), np.float32)
    vectors[5, 1] = np.nan
    with pytest.raises(ArtifactError, match="not finite"):
        fit_codebook(vectors, 4, CodebookConfig(init="faiss"))


def test_empty_prompt_codes_file_is_a_config_error(tmp_path):
    """An empty .npy raises EOFError, which click used to report as "interrupted: rerun"."""
    empty = tmp_path / "prompt.npy"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a list of integer codes"):
        read_prompt_codes(empty)


def test_codes_that_do_not_fit_uint16_are_refused_not_wrapped(tmp_path):
    with pytest.raises(ValueError, match="do not fit uint16"):
        with RaggedWriter(tmp_path, "train", "uint16") as writer:
            writer.add({"id": "a"}, np.array([1, 70000]))


def test_truncated_index_names_the_file_and_line(tmp_path):
    with RaggedWriter(tmp_path, "train", "uint16") as writer:
        for i in range(3):
            writer.add({"id": f"c{i}"}, np.arange(4))
    index = tmp_path / "train.index.jsonl"
    index.write_text(index.read_text()[:-20])  # cut mid-line, as a crash or a full disk would
    split = RaggedSplit(tmp_path, "train", "uint16")  # opens on the index arrays; the JSON is read when asked
    with pytest.raises(ArtifactError, match=r"train.index.jsonl, line 3: not valid JSON"):
        split.rows


def test_index_whose_offsets_do_not_follow_is_damaged(tmp_path):
    with RaggedWriter(tmp_path, "train", "uint16") as writer:
        for i in range(3):
            writer.add({"id": f"c{i}"}, np.arange(4))
    index = tmp_path / "train.index.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    rows[1]["offset"], rows[2]["offset"] = 8, 4  # the same bytes, in another order: wrong clips
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "train.index.npy").unlink()  # an older store: the JSON is the index
    with pytest.raises(ArtifactError, match="entry 2: offset 8"):
        RaggedSplit(tmp_path, "train", "uint16")


def test_a_full_disk_is_one_line_naming_the_file(tiny_run, tmp_path):
    """A file size limit (ulimit -f) stands for a full disk: the write fails with an OSError
    that the CLI turns into one line naming the file (Python ignores SIGXFSZ)."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))

    out = tmp_path / "new"
    done = subprocess.run([sys.executable, "-m", "tokenlm", "tokenize", "--tokenizer", str(tiny_run / "tokenizer"),
                           "--data", str(tiny_run.parent / "corpus"), "--out", str(out), "--device", "cpu"],
                          preexec_fn=limit_file_size, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    line = one_error_line(done.stderr)
    assert done.returncode == 1 and "File too large" in line and str(out) in line


def test_no_usable_train_clip_does_not_point_to_a_manifest_never_written(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", labels=2, groups=2, clips=1, seconds=0.25)
    for wav in corpus.rglob("*.wav"):
        wav.write_bytes(b"not audio")
    with pytest.raises(TokenlmError, match="no usable clip in the train split") as err:
        prepare(corpus, tmp_path / "run", progress=False)
    assert "see the manifest" not in str(err.value) and ".wav" in str(err.value)
    assert not (tmp_path / "run" / "manifest.jsonl").exists()


def test_a_full_disk_while_writing_json_names_the_file(tmp_path):
    """write() and fsync() errors carry no file name: write_json/write_jsonl add the path they
    were writing, so the CLI's one line still says where."""
    script = (
        "import resource, sys\n"
        "from tokenlm.core.fileio import write_json, write_jsonl\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "for write, path in ((write_json, sys.argv[1]), (write_jsonl, sys.argv[2])):\n"
        "    try:\n"
        "        write(path, [{'x': 'y' * 100}] * 100)\n"
        "    except OSError as err:\n"
        "        print(err.filename)\n"
    )
    paths = [tmp_path / "big.json", tmp_path / "big.jsonl"]
    done = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.split() == [str(p) for p in paths], done.stderr
    assert not any(p.exists() for p in paths)  # nothing half-written was published
