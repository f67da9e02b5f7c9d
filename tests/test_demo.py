"""The offline demo dataset: deterministic, complete, well-formed, cached and atomic."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tokenlm import demo
from tokenlm.demo import DemoError, build_demo

pytest.importorskip("tinysoundfont")
pytest.importorskip("pretty_midi")

HAS_ESPEAK = importlib.util.find_spec("espeakng_loader") is not None


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_meta(root: Path) -> list[dict]:
    with open(root / "meta.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "group"]
        return list(reader)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "instruments"
    return out, build_demo(out, clips_per_group=2, progress=False)


def test_tiny_build_is_byte_identical(tiny, tmp_path):
    first, _ = tiny
    again = build_demo(tmp_path / "again", clips_per_group=2, progress=False)
    assert not again["cached"]
    assert tree_hashes(first) == tree_hashes(tmp_path / "again")


def test_layout_and_meta(tiny):
    out, summary = tiny
    rows = read_meta(out)
    n_programs = sum(len(p) for p in demo.INSTRUMENT_FAMILIES.values())
    assert summary["n_clips"] == len(rows) == 2 * n_programs
    assert summary["skipped"] == 0
    assert {p.name for p in out.iterdir()} == set(demo.INSTRUMENT_FAMILIES) | {"meta.csv", "demo.json"}
    wavs = sorted(str(p.relative_to(out)) for p in out.rglob("*.wav"))
    assert wavs == sorted(r["path"] for r in rows)
    for row in rows:
        label, group = row["label"], row["group"]
        assert re.fullmatch(rf"{label}/{label}_{group}_\d{{3}}\.wav", row["path"]), row["path"]
        assert re.fullmatch(r"gm\d{3}", group)
    assert not list(out.parent.glob("*.tmp-*")), "temporary build folder left behind"


def test_classes_and_groups(tiny):
    out, summary = tiny
    groups = defaultdict(set)
    label_of_group = {}
    for row in read_meta(out):
        groups[row["label"]].add(row["group"])
        # a group (GM program) belongs to exactly one class, so group splits are clean
        assert label_of_group.setdefault(row["group"], row["label"]) == row["label"]
    assert len(groups) >= 8 and summary["n_classes"] == len(groups)
    assert all(len(g) >= 3 for g in groups.values()), groups
    assert summary["groups_per_class"] == {k: len(v) for k, v in groups.items()}


def test_audio_format_and_levels(tiny):
    out, summary = tiny
    for row in read_meta(out):
        path = out / row["path"]
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert info.frames == int(demo.INSTRUMENT_CLIP_SECONDS * 16000)
        pcm, _ = sf.read(path, dtype="int16")
        peak = np.abs(pcm.astype(np.int32)).max() / 32767
        assert peak >= demo.SILENT_PEAK, f"{path} is silent"
        assert peak <= demo.PEAK_LIMIT + 1e-4, f"{path} is too loud"
    assert summary["seconds"] == pytest.approx(summary["n_clips"] * demo.INSTRUMENT_CLIP_SECONDS)


def test_complete_build_is_reused(tiny):
    out, summary = tiny
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = build_demo(out, clips_per_group=2, progress=False)
    assert again["cached"]
    assert {k: again[k] for k in summary if k not in ("cached", "build_seconds")} == {
        k: summary[k] for k in summary if k not in ("cached", "build_seconds")
    }
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_changed_parameters_rebuild(tiny, tmp_path):
    out = tmp_path / "demo"
    build_demo(out, clips_per_group=1, progress=False)
    first = tree_hashes(out)
    # clips do not depend on the build's size: a smaller build is a subset of a larger one
    larger = tree_hashes(tiny[0])
    assert all(larger[k] == v for k, v in first.items() if k.endswith(".wav"))
    summary = build_demo(out, clips_per_group=1, seed=1, progress=False)
    assert not summary["cached"]
    second = tree_hashes(out)
    assert first.keys() == second.keys()
    assert first["meta.csv"] == second["meta.csv"]
    assert sum(first[k] != second[k] for k in first if k.endswith(".wav")) == len(first) - 2
    assert not list(tmp_path.glob("demo.*-*")), "temporary or old folders left behind"


def test_interrupted_build_never_looks_finished(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write = demo.write_demo_wav

    def failing_write(path, pcm):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        real_write(path, pcm)

    monkeypatch.setattr(demo, "write_demo_wav", failing_write)
    with pytest.raises(KeyboardInterrupt):
        build_demo(tmp_path / "demo", clips_per_group=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_renders_do_not_depend_on_previous_clips():
    sf_path = demo.soundfont_path(None)
    used = demo.InstrumentRenderer(sf_path)
    prog = demo.INSTRUMENT_FAMILIES["strings"][0]
    notes = demo.draw_phrase(np.random.default_rng(3), prog)
    for other in (demo.INSTRUMENT_FAMILIES["organ"][1], demo.INSTRUMENT_FAMILIES["brass"][2]):
        used.clip(other, demo.draw_phrase(np.random.default_rng(4), other))
    fresh = demo.InstrumentRenderer(sf_path)
    np.testing.assert_array_equal(used.clip(prog, notes), fresh.clip(prog, notes))


def test_phrases_stay_in_range():
    for label, programs in demo.INSTRUMENT_FAMILIES.items():
        for prog in programs:
            for i in range(20):
                notes = demo.draw_phrase(np.random.default_rng(i), prog)
                assert 1 <= len(notes) <= 4
                assert all(prog.low <= n.key <= prog.high for n in notes)
                assert all(0 <= n.on < n.off <= demo.INSTRUMENT_CLIP_SECONDS for n in notes)
                assert all(a.on < b.on for a, b in zip(notes, notes[1:]))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown demo kind"):
        build_demo(tmp_path / "x", kind="drums", progress=False)
    with pytest.raises(ValueError, match="soundfont not found"):
        build_demo(tmp_path / "x", soundfont=tmp_path / "missing.sf2", progress=False)
    with pytest.raises(ValueError, match="clips_per_group"):
        build_demo(tmp_path / "x", clips_per_group=0, progress=False)
    assert not (tmp_path / "x").exists()


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a demo build"):
        build_demo(out, clips_per_group=1, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeakng-loader not installed")
def test_speech_tiny_build(tmp_path):
    a = build_demo(tmp_path / "a", kind="speech", clips_per_group=1, progress=False)
    build_demo(tmp_path / "b", kind="speech", clips_per_group=1, progress=False)
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    rows = read_meta(tmp_path / "a")
    assert a["n_classes"] == len(demo.KEYWORDS) and a["n_groups"] == len(demo.VOICES)
    assert a["n_clips"] == len(rows) == len(demo.KEYWORDS) * len(demo.VOICES)
    for row in rows:
        info = sf.info(tmp_path / "a" / row["path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        pcm, _ = sf.read(tmp_path / "a" / row["path"], dtype="int16")
        assert demo.SILENT_PEAK <= np.abs(pcm.astype(np.int32)).max() / 32767 <= demo.PEAK_LIMIT + 1e-4


def test_stale_work_folders_are_removed(tmp_path):
    stale = tmp_path / "demo.tmp-99999999"  # above any pid_max: no such process
    stale.mkdir()
    (stale / "half.wav").write_bytes(b"")
    build_demo(tmp_path / "demo", clips_per_group=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
