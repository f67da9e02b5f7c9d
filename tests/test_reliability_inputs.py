"""Issue 11, data in (items 2, 3, 8, 9): the manifest belongs to the prepare stage, paths do
not depend on the working directory, changed inputs are noticed, and folder scanning names
what it cannot use. Each test builds its own tiny corpus (and run) with the real stages."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from conftest import run_cli, tone, write_corpus

from tokenlm.core.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.core.fileio import read_json, read_jsonl
from tokenlm.data.layouts import scan_dataset
from tokenlm.data.store import RaggedSplit
from tokenlm.models.autoencoder import AutoencoderConfig
from tokenlm.pipeline.prepare import prepare
from tokenlm.pipeline.tokenize import encode_run_stage, tokenize
from tokenlm.run.artifacts import STAGE_FILE
from tokenlm.run.rundir import MANIFEST, RunDir
from tokenlm.tokenizer.tokenizer import AutoencoderTraining, TokenizerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 4
TINY_TOKENIZER = TokenizerConfig(codebook_size=K, autoencoder=AutoencoderConfig(hidden=(16, 8), bottleneck=4),
                                 training=AutoencoderTraining(epochs=1, batch_size=64))


def corpus(root: Path) -> Path:
    """3 labels x 3 groups x 1 clip of 0.25 s, folder per class."""
    return write_corpus(root, labels=3, groups=3, clips=1, seconds=0.25)


def tokenize_run(tmp_path: Path, data_arg: str | Path, monkeypatch) -> RunDir:
    """tmp_path/corpus prepared as ``data_arg`` from tmp_path, then tokenized (K=4) from
    another working directory."""
    corpus(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    prepare(data_arg, "run", progress=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    tokenize(tmp_path / "run", TINY_TOKENIZER, device="cpu", progress=False)
    return RunDir(tmp_path / "run")


@pytest.fixture
def tokenized(tmp_path, monkeypatch) -> RunDir:
    return tokenize_run(tmp_path, tmp_path / "corpus", monkeypatch)


def encoded_ids(run: RunDir) -> list[str]:
    return [row["id"] for split in ("train", "val", "test") for row in RaggedSplit(run.tokens(K), split, "uint16").rows]


def ok_rows(run: RunDir) -> list[dict]:
    return [r for r in read_jsonl(run.features / MANIFEST) if r["status"] == "ok"]


def replace_keeping_size_and_mtime(path: Path) -> None:
    """What `cp -p other path` does: other bytes of the same length, the old mtime."""
    before = os.stat(path)
    info = sf.info(path)
    sf.write(path, tone(1234.0, info.frames / info.samplerate, info.samplerate, amplitude=0.3), info.samplerate,
             subtype="PCM_16")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


# ---- 2. RUN/manifest.jsonl belongs to the prepare stage --------------------------------------

def test_failed_strict_prepare_leaves_the_runs_manifest_and_tokens_alone(tokenized, tmp_path):
    run = tokenized
    before = (run.manifest.read_bytes(), [r["id"] for r in ok_rows(run)])
    other = tmp_path / "other"  # another dataset: other ids, and one broken file
    other.mkdir()
    for i in range(4):
        sf.write(other / f"x{i}.wav", tone(300.0 + 50 * i, 0.25), 16000)
    (other / "broken.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(TokenlmError, match="--strict"):
        prepare(other, run, strict=True, progress=False)
    assert run.manifest.read_bytes() == before[0]  # still the finished features' manifest

    shutil.rmtree(run.tokens(K))  # encoding again reads the features' clips, not the failed attempt's
    encode_run_stage(run, K, device="cpu", progress=False)
    assert sorted(encoded_ids(run)) == sorted(before[1])


def test_an_up_to_date_prepare_restores_a_missing_or_edited_run_manifest(tmp_path, capsys):
    data = corpus(tmp_path / "corpus")
    run = RunDir(tmp_path / "run")
    prepare(data, run, progress=False)
    run.manifest.unlink()
    prepare(data, run, progress=False)
    assert "up to date" in capsys.readouterr().err
    assert run.manifest.read_bytes() == (run.features / MANIFEST).read_bytes()
    # An edited copy is no longer tokenlm's file: it is kept and named (issue 23: never over a
    # file tokenlm did not write), and restored once it is moved away.
    run.manifest.write_text('{"id": "edited"}\n')
    with pytest.raises(ArtifactError, match="manifest.jsonl was not written by tokenlm"):
        prepare(data, run, progress=False)
    assert run.manifest.read_text() == '{"id": "edited"}\n'
    run.manifest.unlink()
    prepare(data, run, progress=False)
    assert run.manifest.read_bytes() == (run.features / MANIFEST).read_bytes()


# ---- 3. paths do not depend on the working directory -----------------------------------------

def test_a_relative_data_path_is_stored_absolute_and_tokenize_elsewhere_encodes_every_clip(tmp_path, monkeypatch):
    tokenized = tokenize_run(tmp_path, "corpus", monkeypatch)  # the user changed directory in between
    rows = read_jsonl(tokenized.manifest)
    assert rows and all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)
    assert sorted(encoded_ids(tokenized)) == sorted(r["id"] for r in ok_rows(tokenized)) != []


def test_a_clip_gone_since_prepare_fails_tokenize_instead_of_finishing_without_it(tokenized):
    run = tokenized
    gone = Path(ok_rows(run)[0]["path"])
    gone.unlink()
    shutil.rmtree(run.tokens(K))
    with pytest.raises(ArtifactError, match="cannot be found now") as info:
        encode_run_stage(run, K, device="cpu", progress=False)
    assert str(gone) in str(info.value) and "\n" not in str(info.value)
    assert not (run.tokens(K) / STAGE_FILE).exists()


# ---- 8. changed inputs are noticed ------------------------------------------------------------

def test_a_file_replaced_with_its_size_and_mtime_kept_rebuilds_the_features(tmp_path, capsys):
    data = corpus(tmp_path / "corpus")
    out = prepare(data, tmp_path / "run", progress=False)
    key = read_json(out / STAGE_FILE)["key"]
    replace_keeping_size_and_mtime(next(data.rglob("*.wav")))
    capsys.readouterr()
    prepare(data, tmp_path / "run", progress=False)
    assert "up to date" not in capsys.readouterr().err
    assert read_json(out / STAGE_FILE)["key"] != key


def test_vocoder_and_tokenize_refuse_audio_changed_since_prepare(tokenized):
    from tokenlm.models.wavenet import WaveNetConfig
    from tokenlm.pipeline.vocoder import VocoderConfig, train_vocoder
    from tokenlm.training import TrainConfig

    run = tokenized
    changed = Path(ok_rows(run)[0]["path"])
    replace_keeping_size_and_mtime(changed)
    tiny = VocoderConfig(model=WaveNetConfig(layers_per_cycle=2, cycles=1, residual_channels=4, gate_channels=4,
                                             skip_channels=4, cond_channels=4),
                         crop_codes=2, val_crops=2, metrics_clips=0,
                         training=TrainConfig(steps=2, batch_size=2, eval_every=2, log_every=1, device="cpu"))
    with pytest.raises(ArtifactError, match="changed since `tokenlm prepare`"):
        train_vocoder(run, tiny, progress=False)
    shutil.rmtree(run.tokens(K))
    with pytest.raises(ArtifactError, match="changed since `tokenlm prepare`") as info:
        encode_run_stage(run, K, device="cpu", progress=False)
    assert str(changed) in str(info.value)


def test_hash_content_records_each_files_hash_and_keeps_identical_files_together(tmp_path):
    data = corpus(tmp_path / "corpus")
    copies = []
    for label in ("class0", "class1", "class2"):  # one recording copied into every class folder
        copies.append(data / label / "same.wav")
        sf.write(copies[-1], tone(500.0, 0.25), 16000, subtype="PCM_16")
    assert run_cli("prepare", "--data", data, "--out", tmp_path / "run", "--hash-content") == 0
    rows = {r["path"]: r for r in read_jsonl(tmp_path / "run" / MANIFEST)}
    assert all(len(r["file"]["sha256"]) == 64 for r in rows.values())
    assert len({rows[str(p)]["split"] for p in copies}) == 1
    meta = read_json(RunDir(tmp_path / "run").features / "meta.json")
    assert meta["duplicates"] == [sorted(f"{label}/same" for label in ("class0", "class1", "class2"))]


# ---- 9. folder scanning names what it cannot use ------------------------------------------------

def test_a_symlinked_class_folder_is_scanned(tmp_path, capsys):
    data = corpus(tmp_path / "corpus")
    shutil.move(data / "class2", tmp_path / "kept_elsewhere")
    (data / "class2").symlink_to(tmp_path / "kept_elsewhere")
    _, clips = scan_dataset(data)
    assert {c.label for c in clips} == {"class0", "class1", "class2"}
    assert run_cli("data", "info", data) == 0
    assert "3 classes" in capsys.readouterr().out


def test_dangling_symlinks_and_symlink_loops_are_recorded_as_skipped(tmp_path, capsys):
    data = corpus(tmp_path / "corpus")
    (data / "class0" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    (data / "class1" / "loop").symlink_to(data)
    prepare(data, tmp_path / "run", progress=False)
    skipped = {Path(r["path"]).name: r["reason"] for r in read_jsonl(tmp_path / "run" / MANIFEST)
               if r["status"] == "skipped"}
    assert skipped.keys() == {"gone.wav", "loop"}
    assert skipped["gone.wav"].startswith("dangling symlink") and skipped["loop"].startswith("symlink loop")
    capsys.readouterr()
    assert run_cli("data", "info", data) == 0
    assert "2 entries skipped" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_recorded_as_skipped(tmp_path):
    data = corpus(tmp_path / "corpus")
    secret = next(data.rglob("*.wav"))
    secret.chmod(0)
    found = []
    _, clips = scan_dataset(data, skipped=found)
    assert found == [{"path": str(secret), "reason": "unreadable (permission denied)"}]
    assert str(secret) not in {c.path for c in clips}


def test_x_wav_and_x_flac_are_named_when_they_clash(tmp_path):
    data = corpus(tmp_path / "corpus")
    wav = next(data.rglob("*.wav"))
    shutil.copy(wav, wav.with_suffix(".flac"))
    with pytest.raises(ConfigError, match="not unique") as info:
        scan_dataset(data)
    assert str(wav) in str(info.value) and str(wav.with_suffix(".flac")) in str(info.value)


@pytest.mark.parametrize("listed", ["../outside.wav", "/etc/passwd"])
def test_manifest_paths_outside_the_dataset_need_allow_outside(tmp_path, capsys, listed):
    data = tmp_path / "set"
    data.mkdir()
    sf.write(tmp_path / "outside.wav", tone(), 16000)
    (data / "manifest.csv").write_text(f"path,label\n{listed},x\n")
    with pytest.raises(ConfigError, match="outside the dataset folder") as info:
        scan_dataset(data)
    assert listed in str(info.value) and "--allow-outside" in str(info.value)
    assert run_cli("prepare", "--data", data, "--out", tmp_path / "run") == 1
    assert "outside the dataset folder" in capsys.readouterr().err
    _, clips = scan_dataset(data, allow_outside=True)
    assert clips[0].path == os.path.realpath(os.path.join(data, listed))


def test_one_recording_under_two_ids_stays_on_one_side_of_the_split(tmp_path, capsys):
    data = tmp_path / "set"
    (data / "sub").mkdir(parents=True)
    rows = []
    for i in range(12):  # each recording listed twice, under two ids and two spellings of its path
        sf.write(data / f"r{i}.wav", tone(200.0 + 40 * i, 0.25), 16000, subtype="PCM_16")
        rows += [[f"a{i}", f"r{i}.wav", f"label{i % 2}"], [f"b{i}", f"sub/../r{i}.wav", f"label{i % 2}"]]
    with open(data / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "path", "label"], *rows])
    prepare(data, tmp_path / "run", progress=False)
    assert "12 recording(s) listed under more than one id" in capsys.readouterr().err
    split = {r["id"]: r["split"] for r in read_jsonl(tmp_path / "run" / MANIFEST)}
    assert all(split[f"a{i}"] == split[f"b{i}"] for i in range(12))
    assert len(set(split.values())) == 3
