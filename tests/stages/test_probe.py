"""The probe stage on a tiny fabricated run: every row, baselines, folds, split hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tokenlm.cli.probe import command
from tokenlm.core.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.core.fileio import read_json, write_json, write_jsonl
from tokenlm.data.store import RaggedSplit, RaggedWriter
from tokenlm.evaluation.clips import LabelledClips
from tokenlm.evaluation.representations import Representation, parse_layers
from tokenlm.evaluation.rows import representation_row
from tokenlm.pipeline.probe import probe
from tokenlm.pipeline.probe_config import ProbeConfig, configs
from tokenlm.run.artifacts import Stage
from tokenlm.run.rundir import RunDir

# Tiny models: one torch thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_MELS = 16
CLASSES = ("bell", "drum", "flute")
VOCAB = 8

# Baselines as small and short as they can be while still exercising every path.
TINY = dict(
    crop_seconds=0.3, batch_size=8, epochs=2, patience=2, vgg_channels=(4, 8), vgg_convs_per_block=1,
    timbre_filters=4, simclr_epochs=1, simclr_batch_size=8, simclr_projection_dim=8, cs=(0.1, 1.0),
)
# Just enough for the supervised baselines to learn the fabricated classes (no dropout, a
# higher learning rate, 15 epochs of 3 batches).
LEARNING = dict(TINY, epochs=15, patience=15, lr=0.01, dropout=0.0)


def _clip(label_index: int, rng: np.random.Generator) -> np.ndarray:
    """Log-mel (T, N_MELS) in dB: a class-specific spectral peak over noise."""
    frames = int(rng.integers(35, 80))
    x = -60 + 3 * rng.standard_normal((frames, N_MELS))
    peak = 2 + 5 * label_index
    x[:, peak : peak + 3] += 30
    return x.astype(np.float16)


def _codes(label_index: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Codes drawn mostly from a class-specific pair of symbols."""
    favourite = rng.choice([2 * label_index, 2 * label_index + 1], size=length)
    noise = rng.integers(0, VOCAB, size=length)
    return np.where(rng.random(length) < 0.7, favourite, noise).astype(np.uint16)


def make_run(root: Path, *, folds: bool = False, per_split=(6, 2, 2), leak: bool = False, seed: int = 0) -> Path:
    """A run with features (+ tokens): ``per_split`` clips per class in train/val/test, or
    with ``folds`` 4 folds of 3 clips per class (fold 4 test, fold 3 val)."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    clips = []  # (id, label, split, fold)
    for c, label in enumerate(CLASSES):
        if folds:
            for fold in (1, 2, 3, 4):
                split = {4: "test", 3: "val"}.get(fold, "train")
                clips += [(f"{label}-f{fold}-{i}", label, split, fold) for i in range(3)]
        else:
            for split, n in zip(("train", "val", "test"), per_split):
                clips += [(f"{label}-{split}-{i}", label, split, None) for i in range(n)]
    if leak:  # the same clip in train and test
        first = next(c for c in clips if c[2] == "train")
        clips.append((first[0], first[1], "test", None))
    arrays = {c[0] + c[2]: _clip(CLASSES.index(c[1]), rng) for c in clips}

    stage = Stage(RunDir(run).features, config={"fabricated": seed, "folds": folds, "leak": leak})
    work = stage.start()
    train_frames = []
    for split in ("train", "val", "test"):
        with RaggedWriter(work, split, "float16", width=N_MELS) as writer:
            for clip_id, label, s, fold in clips:
                if s == split:
                    writer.add({"id": clip_id, "label": label, "group": None, "fold": fold, "padded": False},
                               arrays[clip_id + s])
                    if s == "train":
                        train_frames.append(arrays[clip_id + s].astype(np.float64))
    frames = np.concatenate(train_frames)
    write_json(work / "meta.json", {
        "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": N_MELS, "f_min": 0.0, "f_max": None,
        "log_floor": 1e-10, "patch_frames": 5, "patch_hop": None,
        "norm": {"mean": frames.mean(0).tolist(), "std": frames.std(0).tolist(), "frames": len(frames)},
    })
    stage.finish()
    write_jsonl(run / "manifest.jsonl", [
        {"id": i, "path": f"{i}.wav", "label": lab, "split": s, "group": None, "fold": f, "duration": 1.0,
         "status": "ok", "reason": None} for i, lab, s, f in clips
    ])

    tokens = Stage(run / "tokens" / f"k{VOCAB}", config={"k": VOCAB})
    work = tokens.start()
    for split in ("train", "val", "test"):
        with RaggedWriter(work, split, "uint16") as writer:
            for clip_id, label, s, fold in clips:
                if s == split:
                    length = len(arrays[clip_id + s]) // 5
                    writer.add({"id": clip_id, "label": label}, _codes(CLASSES.index(label), length, rng))
    write_json(work / "meta.json", {"vocab_size": VOCAB, "dtype": "uint16"})
    tokens.finish()
    return run


def _rows(run: Path) -> dict:
    return {r["name"]: r for r in read_json(run / "probe" / "data" / "results.json")["rows"]}


def test_every_row_is_produced_and_baselines_are_cached(tmp_path):
    run = make_run(tmp_path)
    config = configs(dict(baselines=("vgg", "simclr", "timbre"), **LEARNING))
    out = probe(run, *config, device="cpu", progress=False)
    assert out == run / "probe" / "data"  # the task: the run's own data, named after it
    rows = _rows(run)
    for name in ("logmel_stats", "bag_of_codes", "vgg", "simclr", "timbre"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["dim"] > 0
    # Three clearly different classes (chance: 1/3): every baseline must find them.
    for name in ("vgg", "simclr", "timbre"):
        assert rows[name]["test"]["accuracy"] >= 0.8, (name, rows[name]["test"])
    # No tokenizer or LM in this run: recorded as skipped, with the reason.
    assert rows["autoencoder"]["status"] == "skipped" and "tokenize" in rows["autoencoder"]["reason"]
    assert rows["lm"]["status"] == "skipped" and "pretrain" in rows["lm"]["reason"]
    # The fabricated classes are easy: the floor representation must find them.
    assert rows["logmel_stats"]["test"]["accuracy"] == 1.0
    assert rows["logmel_stats"]["dim"] == 2 * N_MELS
    assert rows["bag_of_codes"]["dim"] == VOCAB
    assert rows["vgg"]["kind"] == "supervised end-to-end" and rows["simclr"]["kind"] == "linear probe"

    report = (run / "probe" / "data" / "report.md").read_text()
    for title in ("log-mel statistics", "bag of codes", "VGG-style CNN", "SimCLR", "timbre CNN", "Skipped"):
        assert title in report
    for name in ("vgg", "timbre"):
        folder = run / "baselines" / name
        assert (folder / "model.safetensors").is_file() and (folder / "results.json").is_file()
        assert read_json(folder / "config.json")["classes"] == list(CLASSES)
    # SimCLR is pretrained like the LM, on the train split without labels; the probe reads it.
    simclr = run / "baselines" / "simclr"
    assert (simclr / "model.safetensors").is_file() and read_json(simclr / "metrics.json")["train_clips"] == 18
    assert "classes" not in read_json(simclr / "config.json")

    # Every clip once, in one split only: the probe never mixes splits.
    for name in ("logmel_stats", "simclr"):
        result = rows[name]["test"]
        assert (result["n_train"], result["n_val"], result["n_test"]) == (18, 6, 6)

    # A rerun reuses the trained baselines and the finished probe.
    stamp = (run / "baselines" / "vgg" / "model.safetensors").stat().st_mtime_ns
    probe(run, *config, device="cpu", progress=False)
    assert (run / "baselines" / "vgg" / "model.safetensors").stat().st_mtime_ns == stamp


def test_folds_are_cross_validated(tmp_path):
    run = make_run(tmp_path, folds=True)
    probe(run, *configs(dict(baselines=("timbre",), **TINY)), device="cpu", progress=False)
    rows = _rows(run)
    for name in ("logmel_stats", "bag_of_codes", "timbre"):
        folds = rows[name]["folds"]
        assert [f["test_fold"] for f in folds["per_fold"]] == [1, 2, 3, 4]
        assert [f["val_fold"] for f in folds["per_fold"]] == [4, 1, 2, 3]
        assert 0.0 <= folds["accuracy_mean"] <= 1.0 and folds["accuracy_std"] >= 0.0
    assert rows["logmel_stats"]["folds"]["accuracy_mean"] == 1.0
    assert (run / "baselines" / "timbre" / "folds" / "fold2" / "model.safetensors").is_file()
    assert "± " in (run / "probe" / "data" / "report.md").read_text()


def test_a_clip_in_two_splits_is_refused(tmp_path):
    run = make_run(tmp_path, leak=True)
    with pytest.raises(ArtifactError, match="both the train and the test split"):
        LabelledClips(run)


def test_manifest_disagreeing_with_features_is_refused(tmp_path):
    run = make_run(tmp_path)
    rows = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    rows[0]["split"] = "test"
    write_jsonl(run / "manifest.jsonl", rows)
    with pytest.raises(ArtifactError, match="out of date"):
        LabelledClips(run)


def test_config_parsing():
    assert ProbeConfig(baselines=("VGG", " simclr", "none")).baselines == ("vgg", "simclr")
    assert ProbeConfig(baselines="vgg,timbre").baselines == ("vgg", "timbre")
    assert ProbeConfig(layers=[4, 0]).layers == "0,4"
    assert parse_layers("all", 3) == [0, 1, 2]
    with pytest.raises(ConfigError):
        parse_layers("0,5", 3)
    with pytest.raises(ValueError):
        ProbeConfig(baselines=("resnet",))


def test_command_help_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(command, ["--help"])
    assert result.exit_code == 0 and "--baselines" in result.output
    result = runner.invoke(command, [str(tmp_path), "--baselines", "resnet"], standalone_mode=False)
    assert isinstance(result.exception, ConfigError)
    result = runner.invoke(command, [str(tmp_path / "nothing")], standalone_mode=False)
    assert isinstance(result.exception, TokenlmError) and "no features" in str(result.exception)


def test_command_reads_recipe_and_overrides(tmp_path):
    run = make_run(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  dir: " + str(run) + "\nprobe:\n  cs: [1.0]\n  baselines: [vgg]\n  epochs: 1\n")
    result = CliRunner().invoke(command, ["--config", str(recipe), "--baselines", "none", "--device", "cpu"],
                                standalone_mode=False)
    assert result.exception is None, result.output
    saved = read_json(run / "probe" / "data" / "stage.json")["config"]
    assert saved["baselines"] == [] and saved["cs"] == [1.0] and saved["epochs"] == 1
    assert "| log-mel statistics" in result.output


def _train_tokenizer_and_lm(run: Path) -> None:
    """A real (tiny) tokenizer and code LM on the fabricated run, through their own stages."""
    import torch

    from tokenlm.core.config import build
    from tokenlm.models.autoencoder import AutoencoderConfig
    from tokenlm.models.gpt import LMConfig
    from tokenlm.pipeline.pretrain import pretrain
    from tokenlm.pipeline.tokenize import fit_codebook_stage, train_autoencoder_stage
    from tokenlm.tokenizer.codebook import CodebookConfig
    from tokenlm.tokenizer.tokenizer import AudioTokenizer, AutoencoderTraining
    from tokenlm.training import TrainConfig

    cpu = torch.device("cpu")
    train_autoencoder_stage(run, AutoencoderConfig(hidden=(32, 16), bottleneck=8),
                            AutoencoderTraining(epochs=1, batch_size=64), device=cpu, progress=False)
    fit_codebook_stage(run, VOCAB, CodebookConfig(niter=2, gpu="never"), device=cpu)
    write_json(RunDir(run).tokenizer / "current.json", {"codebook_size": VOCAB})
    # Codes from the real tokenizer, written over the fabricated ones (the tokens stage proper
    # decodes audio files, which this run does not have).
    tokenizer = AudioTokenizer.load(RunDir(run).tokenizer, codebook_size=VOCAB)
    tokens = Stage(run / "tokens" / f"k{VOCAB}", config={"k": VOCAB, "real": True})
    work = tokens.start()
    for split in ("train", "val", "test"):
        source = RaggedSplit(RunDir(run).features, split, "float16", width=N_MELS)
        with RaggedWriter(work, split, "uint16") as writer:
            for row, frames in source:
                codes = tokenizer.encode_frames(torch.from_numpy(frames.astype(np.float32)))
                writer.add({"id": row["id"], "label": row["label"]}, codes.numpy())
    write_json(work / "meta.json", {"vocab_size": VOCAB, "dtype": "uint16", "code_rate": 20.0})
    tokens.finish()
    training = build(TrainConfig, {"steps": 2, "batch_size": 4, "eval_every": 2, "warmup_steps": 1,
                                   "device": "cpu"})
    pretrain(run, LMConfig(n_layer=2, n_head=2, n_embd=16, context=16, dropout=0.0), training, progress=False)


def test_autoencoder_and_lm_rows_with_a_real_tokenizer_and_lm(tmp_path):
    pytest.importorskip("tokenlm.tokenizer.faiss_runtime")
    pytest.importorskip("transformers")
    run = make_run(tmp_path, per_split=(4, 2, 2))
    _train_tokenizer_and_lm(run)
    probe(run, ProbeConfig(cs=(1.0,), lm_reading="auto"), device="cpu", progress=False)
    rows = _rows(run)
    assert rows["autoencoder"]["status"] == "ok" and rows["autoencoder"]["dim"] == 2 * 8
    assert rows["autoencoder"]["encoder_params"] > 0
    # Layers 0 (embeddings), 1 and 2, and the best of them chosen on val.
    assert [n for n in rows if n.startswith("lm_layer_")] == ["lm_layer_0", "lm_layer_1", "lm_layer_2"]
    assert all(rows[f"lm_layer_{i}"]["dim"] == 16 for i in range(3))
    assert rows["lm_best"]["layer"] in rows and rows["lm_best"]["test"] == rows[rows["lm_best"]["layer"]]["test"]
    assert rows["bag_of_codes"]["status"] == "ok"
    assert "LM best layer" in (run / "probe" / "data" / "report.md").read_text()
    # The reading (once, or the clip twice keeping the second) is chosen on val and recorded.
    readings = rows["lm_best"]["reading_val_accuracy"]
    assert set(readings) == {"once", "twice"}
    assert readings[rows["lm_best"]["reading"]] == max(readings.values())
    assert rows["lm_best"]["test"]["val_accuracy"] == max(readings.values())

    # Pooling is chosen per row on val (ties: the row's customary pooling) and recorded.
    assert rows["lm_best"]["pooling"] == rows[rows["lm_best"]["layer"]]["pooling"]
    assert set(rows["autoencoder"]["pooling_val_accuracy"]) == {"mean", "mean+std", "mean+max"}

    # --layers picks rows; concat_layers adds the chosen layers side by side, pooled as lm_best.
    probe(run, ProbeConfig(cs=(1.0,), layers="0,2", concat_layers=True, pooling="mean+max"), device="cpu",
          progress=False)
    rows = _rows(run)
    assert [n for n in rows if n.startswith("lm_layer_")] == ["lm_layer_0", "lm_layer_2"]
    assert rows["lm_concat"]["dim"] == 2 * 2 * 16 and rows["lm_concat"]["pooling"] == "mean+max"
    assert rows["autoencoder"]["pooling"] == "mean+max" and rows["autoencoder"]["dim"] == 2 * 8
    # A fixed reading is the only one tried.
    probe(run, ProbeConfig(cs=(1.0,), lm_reading="twice"), device="cpu", progress=False)
    rows = _rows(run)
    assert rows["lm_best"]["reading"] == "twice" and set(rows["lm_best"]["reading_val_accuracy"]) == {"twice"}
    assert "clip read twice" in rows["lm_layer_1"]["notes"]
    # A layer the LM does not have is a clear error.
    with pytest.raises(ConfigError, match="layers"):
        probe(run, ProbeConfig(cs=(1.0,), layers="7"), device="cpu", progress=False)


def test_interrupted_fold_training_resumes_finished_models(tmp_path, monkeypatch):
    import tokenlm.pipeline.baselines as baselines_module

    run = make_run(tmp_path, folds=True)
    config = configs(dict(baselines=("timbre",), **TINY))
    real_fit, calls = baselines_module._fit_supervised, []

    def fit_then_interrupt(*args, **kwargs):
        calls.append(args[5])  # out folder
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(baselines_module, "_fit_supervised", fit_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        probe(run, *config, device="cpu", progress=False)
    assert not (run / "baselines" / "timbre").exists()  # interrupted work never looks finished
    monkeypatch.setattr(baselines_module, "_fit_supervised", real_fit)
    stamp = (next((run / "baselines").glob(".timbre.partial-*")) / "folds" / "fold1" / "model.safetensors").stat().st_mtime_ns
    probe(run, *config, device="cpu", progress=False)
    assert (run / "baselines" / "timbre" / "folds" / "fold1" / "model.safetensors").stat().st_mtime_ns == stamp
    assert len(_rows(run)["timbre"]["folds"]["per_fold"]) == 4


def test_pooling_is_chosen_on_val_never_on_test(tmp_path):
    clips = LabelledClips(make_run(tmp_path, per_split=(6, 4, 4)))
    rng = np.random.default_rng(5)
    labels = np.array([CLASSES.index(label) for label in clips.labels])
    # Mean and std over time say nothing about the class; the max does.
    statistics = {"mean": rng.standard_normal((len(clips), 3)), "std": rng.random((len(clips), 3)),
                  "max": 3 * np.eye(3)[labels] + 0.1 * rng.standard_normal((len(clips), 3))}
    rep = Representation("autoencoder", "bottleneck", None, statistics=statistics, pooling="mean")
    row = representation_row(rep, clips, ProbeConfig(cs=(1.0,)))
    val = row["pooling_val_accuracy"]
    assert row["pooling"] == "mean+max" and val["mean+max"] == 1.0 > val["mean"]
    assert row["dim"] == 6 and row["title"] == "bottleneck, mean+max" and row["test"]["accuracy"] == 1.0
    # Test vectors play no part: scrambled, the choice and the val scores stay, the test score drops.
    test = clips.index("test")
    scrambled = {k: v.copy() for k, v in statistics.items()}
    scrambled["max"][test] = scrambled["max"][rng.permutation(test)]
    again = representation_row(Representation("autoencoder", "bottleneck", None, statistics=scrambled,
                                              pooling="mean"), clips, ProbeConfig(cs=(1.0,)))
    assert (again["pooling"], again["pooling_val_accuracy"]) == (row["pooling"], val)
    assert again["test"]["accuracy"] < 1.0
    # A fixed pooling is the only one tried.
    fixed = representation_row(rep, clips, ProbeConfig(cs=(1.0,), pooling="mean"))
    assert fixed["pooling"] == "mean" and list(fixed["pooling_val_accuracy"]) == ["mean"]
    with pytest.raises(ConfigError, match="pooling"):
        configs({"pooling": "median"})
