"""The prepare stage end to end on a tiny corpus with some unusable clips."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tokenlm.cli import main
from tokenlm.core.errors import TokenlmError
from tokenlm.core.fileio import read_json, read_jsonl
from tokenlm.data.audio import load_audio
from tokenlm.data.clips import SPLITS
from tokenlm.data.features import FeatureConfig, LogMel
from tokenlm.data.store import RaggedSplit
from tokenlm.pipeline.prepare import prepare
from tokenlm.run.artifacts import STAGE_FILE, Stage
from tokenlm.run.rundir import MANIFEST, RunDir, read_feature_meta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# file name -> reason fragment expected in the manifest
BROKEN = {
    "broken/random.wav": "cannot decode",
    "broken/silent.wav": "silent",
    "broken/nan.wav": "NaN",
    "broken/tiny.wav": "too short",
}


def add_to_manifest(root, rows):
    with open(root / "manifest.csv", "a", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture
def corpus(make_corpus, make_tone):
    """18 good clips (3 labels x 3 groups x 2, 0.25 s), one clip shorter than a patch but
    usable, and four unusable ones, listed in DIR/manifest.csv."""
    root = make_corpus(layout="csv")
    (root / "broken").mkdir()
    (root / "broken/random.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    sf.write(root / "broken/silent.wav", np.zeros(8000, np.float32), 16000, subtype="PCM_16")
    nan = make_tone(440.0, 0.25, 16000)
    nan[7] = np.nan
    sf.write(root / "broken/nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(root / "broken/tiny.wav", make_tone(440.0, 0.01, 16000), 16000)  # 160 samples < n_fft
    # 0.03 s at 44.1 kHz stereo -> 480 samples at 16 kHz -> 4 frames < one 5-frame patch
    sf.write(root / "broken/short.wav", make_tone(440.0, 0.03, 44100, channels=2), 44100)
    add_to_manifest(root, [[rel, "class0", "class0_g0"] for rel in [*BROKEN, "broken/short.wav"]])
    return root


def frames_of(path, config=FeatureConfig()):
    with torch.inference_mode():
        return LogMel(config)(torch.from_numpy(load_audio(path, config.sample_rate))).numpy()


def test_prepare_end_to_end(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    out = prepare(corpus, run, progress=False)
    assert out == RunDir(run).features and (out / STAGE_FILE).is_file()
    err = capsys.readouterr().err
    assert "19 clips ok, 4 skipped" in err
    for reason in ("cannot decode", "silent", "NaN", "too short"):
        assert reason in err
    assert str(run / MANIFEST) in err

    # the manifest: one line per input clip, with status and reason
    manifest = read_jsonl(run / MANIFEST)
    assert len(manifest) == 23
    assert read_jsonl(out / MANIFEST) == manifest
    by_path = {m["path"]: m for m in manifest}
    for rel, reason in BROKEN.items():
        row = by_path[str(corpus / rel)]
        assert row["status"] == "skipped" and reason in row["reason"] and row["duration"] is None
    for m in manifest:
        assert set(m) >= {"id", "path", "label", "split", "group", "duration", "status", "reason"}
        assert m["split"] in SPLITS
    good = [m for m in manifest if m["status"] == "ok"]
    assert all(m["reason"] is None for m in good)
    assert {m["duration"] for m in good} == {0.25, 0.03}

    # features per split: the ok clips of that split, in manifest order, as float16 log-mel
    meta = read_json(out / "meta.json")
    assert meta["n_mels"] == 64 and meta["clips_ok"] == 19 and meta["clips_skipped"] == 4
    assert meta["classes"] == ["class0", "class1", "class2"] and meta["layout"] == "manifest"
    for split in SPLITS:
        stored = RaggedSplit(out, split, "float16", width=64)
        expected = [m for m in good if m["split"] == split]
        assert [r["id"] for r in stored.rows] == [m["id"] for m in expected]
        assert meta["splits"][split] == len(expected) >= 1
        for row, m in zip(stored.rows, expected):
            assert row["label"] == m["label"] and row["group"] == m["group"]
            frames = frames_of(m["path"])
            assert row["length"] == len(frames)
            assert row["padded"] == (len(frames) < 5)
            np.testing.assert_array_equal(stored[stored.rows.index(row)], frames.astype(np.float16))
    short = next(m for m in manifest if m["path"].endswith("short.wav"))
    short_row = next(r for r in RaggedSplit(out, short["split"], "float16", width=64).rows if r["id"] == short["id"])
    assert short_row["padded"] and short_row["length"] == 4
    assert read_feature_meta(RunDir(run).features).config == FeatureConfig()


def test_norm_stats_come_from_train_only(corpus, tmp_path):
    run = tmp_path / "run"
    prepare(corpus, run, progress=False)
    manifest = [m for m in read_jsonl(run / MANIFEST) if m["status"] == "ok"]
    train = np.concatenate([frames_of(m["path"]) for m in manifest if m["split"] == "train"]).astype(np.float64)
    everything = np.concatenate([frames_of(m["path"]) for m in manifest]).astype(np.float64)
    norm = read_json(RunDir(run).features / "meta.json")["norm"]
    assert norm["frames"] == len(train)
    np.testing.assert_allclose(norm["mean"], train.mean(axis=0), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(norm["std"], np.maximum(train.std(axis=0), 1e-3), rtol=1e-5, atol=1e-4)
    assert np.abs(np.array(norm["mean"]) - everything.mean(axis=0)).max() > 0.1  # val/test would show


def test_rerun_skips_and_changes_rebuild(make_corpus, tmp_path, capsys):
    data = make_corpus(layout="folders", labels=3, groups=3, clips=1)
    run = tmp_path / "run"
    out = prepare(data, run, progress=False)
    stage_file = out / STAGE_FILE
    before = (stage_file.read_bytes(), stage_file.stat().st_mtime_ns, (out / "train.bin").stat().st_mtime_ns)
    capsys.readouterr()

    prepare(data, run, progress=False)
    assert "up to date" in capsys.readouterr().err
    assert (stage_file.read_bytes(), stage_file.stat().st_mtime_ns, (out / "train.bin").stat().st_mtime_ns) == before

    # a changed feature config rebuilds
    prepare(data, run, FeatureConfig(n_mels=32, f_max=7000.0), progress=False)
    record = read_json(stage_file)
    assert record["key"] != json.loads(before[0])["key"]
    assert record["config"]["features"]["n_mels"] == 32
    assert RaggedSplit(out, "train", "float16", width=32)[0].shape[1] == 32
    assert read_feature_meta(RunDir(run).features).config.f_max == 7000.0
    # no work or old folder left (the record of what tokenlm published there is no leftover)
    assert not any(p.name.startswith(".") and p.name != ".tokenlm-outputs.json" for p in run.iterdir())

    # a changed input file rebuilds
    key = record["key"]
    wav = next(data.rglob("*.wav"))
    sf.write(wav, np.full(8000, 0.1, np.float32) * np.sin(np.arange(8000)), 16000)
    prepare(data, run, FeatureConfig(n_mels=32, f_max=7000.0), progress=False)
    assert read_json(stage_file)["key"] != key


def test_strict_fails_with_the_manifest_written(corpus, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TokenlmError, match=r"--strict: 4 clip\(s\) skipped") as info:
        prepare(corpus, run, strict=True, progress=False)
    assert "\n" not in str(info.value)
    named = str(info.value).rsplit("every clip's status: ", 1)[1].rstrip(")")
    assert len(read_jsonl(named)) == 23  # the reasons can be read, in the manifest the error names
    assert not (RunDir(run).features / STAGE_FILE).exists()  # nothing looks finished
    assert not (run / MANIFEST).exists()  # RUN/manifest.jsonl is written only when the stage finishes

    prepare(corpus, run, progress=False)  # without --strict the same corpus is fine
    with pytest.raises(TokenlmError, match="--strict"):  # and a finished run is checked too
        prepare(corpus, run, strict=True, progress=False)


def test_strict_passes_on_a_clean_corpus(make_corpus, tmp_path):
    out = prepare(make_corpus(labels=3, groups=3, clips=1), tmp_path / "run", strict=True, progress=False)
    assert Stage(out, {}).out_dir.is_dir() and (out / STAGE_FILE).is_file()


def test_cli_strict_is_one_line_and_exit_code_1(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--data", str(corpus), "--out", str(tmp_path / "run"), "--strict"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "--strict: 4 clip(s) skipped" in error_lines[0]
    assert err.rstrip().splitlines()[-1] == error_lines[0]


def test_cli_prepare_from_a_recipe(make_corpus, tmp_path, capsys):
    data = make_corpus(labels=3, groups=3, clips=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  path: {data}\nrun:\n  dir: {tmp_path / 'run'}\n"
                      f"features:\n  n_mels: 16\n  f_max: 6000\nsplit:\n  seed: 3\n")
    main(["prepare", "--config", str(recipe)])
    meta = read_json(RunDir(tmp_path / "run").features / "meta.json")
    assert meta["n_mels"] == 16 and meta["f_max"] == 6000.0
    assert read_json(RunDir(tmp_path / "run").features / STAGE_FILE)["config"]["split"]["seed"] == 3

    recipe.write_text("features:\n  n_mel: 16\n")  # a typo names the known options
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--config", str(recipe), "--data", str(data), "--out", str(tmp_path / "run2")])
    assert info.value.code == 1
    assert "unknown option 'features.n_mel'" in capsys.readouterr().err


def test_no_usable_train_clip_is_an_error(tmp_path):
    root = tmp_path / "bad"
    for name in ("a", "b", "c"):
        (root / "x").mkdir(parents=True, exist_ok=True)
        (root / "x" / f"{name}.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(TokenlmError, match="no usable clip in the train split"):
        prepare(root, tmp_path / "run", progress=False)
    assert not (RunDir(tmp_path / "run").features / STAGE_FILE).exists()


def test_prepare_leaves_torch_threads_as_they_were(make_corpus, tmp_path):
    previous = torch.get_num_threads()
    prepare(make_corpus(labels=3, groups=3, clips=1), tmp_path / "run", progress=False)
    assert torch.get_num_threads() == previous
