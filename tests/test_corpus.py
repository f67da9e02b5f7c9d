"""The pretraining corpus (deterministic, resumable, unlabelled, disjoint from the demo
tasks) and the pitch demo task."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli

from tokenlm.data.layouts import scan_dataset
from tokenlm.data.splits import SplitConfig, assign_splits
from tokenlm.demo import PITCH_CLASSES, PITCH_PROGRAMS, build_demo
from tokenlm.demo.common import PEAK_LIMIT, SILENT_PEAK
from tokenlm.demo.corpus import BUILD_FILE, INFO_FILE, MANIFEST_FILE, build_corpus
from tokenlm.demo.sentences import VOCABULARY, draw_sentence
from tokenlm.demo.speech import KEYWORDS
from tokenlm.pipeline import data as data_stage
from tokenlm.pipeline.registry import RunContext

pytest.importorskip("tinysoundfont")
pytest.importorskip("pretty_midi")
if importlib.util.find_spec("espeakng_loader") is None:
    pytest.skip("the corpus speaks with eSpeak NG (espeakng-loader)", allow_module_level=True)

HOURS = 0.02  # about five files


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_rows(root: Path) -> list[dict]:
    with open(root / MANIFEST_FILE, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build_corpus(out, hours=HOURS, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def pitch(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "pitch"
    build_demo(out, kind="pitch", progress=False)
    return out


def test_rebuild_is_byte_identical_whatever_the_workers(corpus, tmp_path):
    summary = build_corpus(tmp_path / "again", hours=HOURS, workers=2, progress=False)
    assert not summary["cached"] and summary["rendered"] == summary["n_files"]
    assert tree_hashes(tmp_path / "again") == tree_hashes(corpus)
    assert build_corpus(tmp_path / "again", hours=HOURS, progress=False)["cached"]


def test_interrupted_build_resumes_to_the_same_bytes(corpus, tmp_path):
    # What a build killed half-way leaves: its parameters, some finished files, a temp file.
    part = tmp_path / "part"
    shutil.copytree(corpus, part)
    params = json.loads((part / INFO_FILE).read_text())["params"]
    (part / BUILD_FILE).write_text(json.dumps({k: v for k, v in params.items() if k != "hours"}))
    (part / INFO_FILE).unlink()
    (part / MANIFEST_FILE).unlink()
    wavs = sorted((part / "audio").glob("*.wav"))
    for wav in wavs[1::2]:
        wav.unlink()
    (part / "audio" / f".{wavs[1].name}.tmp-999999").write_bytes(b"half a file")
    summary = build_corpus(part, hours=HOURS, workers=1, progress=False)
    assert summary["rendered"] == len(wavs[1::2])
    assert tree_hashes(part) == tree_hashes(corpus)


def test_more_hours_extend_a_build(corpus, tmp_path):
    shutil.copytree(corpus, tmp_path / "c")
    n = len(manifest_rows(corpus))
    summary = build_corpus(tmp_path / "c", hours=HOURS * 2, workers=1, progress=False)
    assert 0 < summary["rendered"] == summary["n_files"] - n
    rows = manifest_rows(tmp_path / "c")
    assert rows[:n] == manifest_rows(corpus)  # the first files are kept as they were
    assert tree_hashes(tmp_path / "c")["audio/000000.wav"] == tree_hashes(corpus)["audio/000000.wav"]


def test_files_are_5_to_30_s_levelled_and_listed(corpus):
    rows = manifest_rows(corpus)
    assert list(rows[0]) == ["path", "kind", "seconds", "effects"]
    assert sorted(r["path"] for r in rows) == sorted(
        str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.suffix == ".wav")
    assert not [p for p in corpus.rglob(".*tmp*")]
    for row in rows:
        info = sf.info(corpus / row["path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 5.0 <= info.duration <= 30.0 and info.frames == round(float(row["seconds"]) * 16000)
        audio, _ = sf.read(corpus / row["path"])
        assert SILENT_PEAK < np.abs(audio).max() <= PEAK_LIMIT + 1e-4, row
    summary = json.loads((corpus / INFO_FILE).read_text())["summary"]
    assert summary["n_files"] == len(rows) and summary["seconds"] >= HOURS * 3600


def test_manifest_reads_as_unlabelled_clips(corpus):
    layout, clips = scan_dataset(corpus)
    assert layout == "manifest"
    assert len(clips) == len(manifest_rows(corpus))
    assert {c.label for c in clips} == {None}


def test_corpus_speech_never_says_a_keyword():
    assert not VOCABULARY & set(KEYWORDS)
    rng = np.random.default_rng(0)
    for _ in range(300):
        words = {w.strip(".,?").lower() for w in draw_sentence(rng).split()}
        assert not words & set(KEYWORDS)


def _keys(pcm: np.ndarray) -> np.ndarray:
    """Every run of 4 consecutive samples as one uint64."""
    u = pcm.astype(np.uint16).astype(np.uint64)
    return u[:-3] | (u[1:-2] << 16) | (u[2:-1] << 32) | (u[3:] << 48)


def _contains(haystack: np.ndarray, keys: np.ndarray, needle: np.ndarray) -> bool:
    """Whether ``needle`` (int16) occurs as is in ``haystack``, found through its first 4
    samples' key and confirmed sample by sample."""
    for start in np.flatnonzero(keys == _keys(needle[:4])[0]):
        if np.array_equal(haystack[start: start + len(needle)], needle):
            return True
    return False


def _loudest_window(pcm: np.ndarray, n: int = 256) -> np.ndarray:
    start = min(int(np.argmax(np.abs(pcm))), len(pcm) - n)
    return pcm[start: start + n]


def test_corpus_holds_no_demo_clip(corpus, pitch, tmp_path):
    demos = [pitch, tmp_path / "instruments", tmp_path / "speech"]
    build_demo(demos[1], clips_per_group=1, progress=False)
    build_demo(demos[2], kind="speech", clips_per_group=1, progress=False)
    windows = [_loudest_window(sf.read(p, dtype="int16")[0]) for d in demos for p in sorted(d.rglob("*.wav"))]
    files = [sf.read(corpus / r["path"], dtype="int16")[0] for r in manifest_rows(corpus)]

    # The check finds a demo window that is there.
    planted = np.concatenate([files[0][:1000], windows[0], files[0][1000:]])
    assert _contains(planted, _keys(planted), windows[0])

    for audio in files:
        keys = _keys(audio)
        assert not any(_contains(audio, keys, w) for w in windows)


def test_pitch_demo_is_balanced_and_group_split_safe(pitch):
    with open(pitch / "meta.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(PITCH_CLASSES) * len(PITCH_PROGRAMS)
    assert {r["label"] for r in rows} == set(PITCH_CLASSES)
    assert all(r["path"].startswith(f"{r['label']}/") for r in rows)
    _, clips = scan_dataset(pitch)
    clips = assign_splits(clips, SplitConfig())
    split_of: dict[str, str] = {}
    for clip in clips:  # every program (group) on one side only
        assert split_of.setdefault(clip.group, clip.split) == clip.split
    for split in ("train", "val", "test"):  # and every pitch class on every side
        assert {c.label for c in clips if c.split == split} == set(PITCH_CLASSES)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    for hours in ("0", "-1", "nan"):
        assert run_cli("data", "corpus", "--hours", hours, "--out", tmp_path / "c") == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: hours must be a positive number") and "\n" not in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "song.wav").write_bytes(b"")
    assert run_cli("data", "corpus", "--hours", "0.01", "--out", tmp_path / "mine") == 1
    assert "is not a corpus build" in capsys.readouterr().err
    assert (tmp_path / "mine" / "song.wav").exists()


def test_data_stage_builds_what_the_recipe_asks_for(corpus, pitch, tmp_path):
    shutil.copytree(pitch, tmp_path / "pitch")  # up to date: reused as it is
    stamp = (tmp_path / "pitch" / "demo.json").stat().st_mtime_ns
    (tmp_path / "own").mkdir()  # not a demo build: left alone
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"run: {{dir: {tmp_path / 'run'}}}\n"
        f"pretrain: {{path: {tmp_path / 'corpus'}, corpus_hours: {HOURS}}}\n"
        f"tasks:\n  pitch: {{path: {tmp_path / 'pitch'}, demo: pitch}}\n"
        f"  own: {{path: {tmp_path / 'own'}, demo: speech}}\n")
    data_stage.run(RunContext.create(None, recipe, progress=False))
    assert tree_hashes(tmp_path / "corpus") == tree_hashes(corpus)
    assert (tmp_path / "pitch" / "demo.json").stat().st_mtime_ns == stamp
    assert not any((tmp_path / "own").iterdir())

    # A list of corpus paths is never built.
    recipe.write_text(f"run: {{dir: {tmp_path / 'run'}}}\n"
                      f"pretrain: {{path: [{tmp_path / 'x'}], corpus_hours: {HOURS}}}\n")
    data_stage.run(RunContext.create(None, recipe, progress=False))
    assert not (tmp_path / "x").exists()
