"""The input formats beyond folders: a Hugging Face audiofolder, a saved `datasets` dataset and
segment (start/end) manifests give exactly the features of the same clips as separate files.

"Exactly": features are compared bit for bit (float16 store). A segment is cut at sample
round(t * file rate) and featurised alone, as the file holding those samples would be, so
nothing differs at its boundaries, resampled or not: the tolerance is zero.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import sound, write_corpus

from tokenlm.core.errors import ConfigError
from tokenlm.core.fileio import read_json, read_jsonl
from tokenlm.data.audio import Span, audio_blocks, audio_seconds, load_audio
from tokenlm.data.clips import SPLITS
from tokenlm.data.layouts import scan_dataset
from tokenlm.data.store import RaggedSplit
from tokenlm.pipeline.prepare import prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def features_by_id(run: Path) -> dict[str, tuple[str, np.ndarray]]:
    """clip id -> (split, log-mel frames) of a prepared run."""
    n_mels = read_json(run / "features" / "meta.json")["n_mels"]
    found = {}
    for split in SPLITS:
        for row, frames in RaggedSplit(run / "features", split, "float16", width=n_mels):
            found[row["id"]] = (split, np.array(frames))
    return found


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A folder-per-class corpus and its features (the reference every format must match)."""
    root = tmp_path_factory.mktemp("inputs")
    corpus = write_corpus(root / "folders", labels=2, groups=2, clips=2)
    prepare(corpus, root / "run", progress=False)
    return corpus, features_by_id(root / "run")


def assert_same_features(found: dict, reference: dict, id_of=lambda clip_id: clip_id) -> None:
    assert sorted(id_of(i) for i in found) == sorted(reference)
    for clip_id, (_, frames) in found.items():
        np.testing.assert_array_equal(frames, reference[id_of(clip_id)][1])


def test_audiofolder_metadata_at_the_top(tmp_path, folders):
    corpus, reference = folders
    root = shutil.copytree(corpus, tmp_path / "af")
    rows = [{"file_name": p.relative_to(root).as_posix(), "label": p.parent.name} for p in sorted(root.rglob("*.wav"))]
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "label"])
        writer.writeheader()
        writer.writerows(rows)
    layout, clips = scan_dataset(root)
    assert layout == "manifest" and {c.label for c in clips} == {"class0", "class1"}
    prepare(root, tmp_path / "run", progress=False)
    assert_same_features(features_by_id(tmp_path / "run"), reference)


def test_audiofolder_split_folders(tmp_path, folders):
    """ROOT/train/metadata.jsonl, ROOT/validation/..., ROOT/test/...: the folder is the split."""
    corpus, reference = folders
    root = tmp_path / "af"
    files = sorted(corpus.rglob("*.wav"))
    for n, path in enumerate(files):
        split = ("train", "train", "validation", "test")[n % 4]
        rel = path.relative_to(corpus)
        (root / split / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / split / rel)
        with open(root / split / "metadata.jsonl", "a") as f:
            f.write(json.dumps({"file_name": rel.as_posix(), "label": path.parent.name}) + "\n")
    layout, clips = scan_dataset(root)
    assert layout == "audiofolder"
    assert {c.id.split("/")[0]: c.split for c in clips} == {"train": "train", "validation": "val", "test": "test"}
    prepare(root, tmp_path / "run", progress=False)
    found = features_by_id(tmp_path / "run")
    assert all(split == {"validation": "val"}.get(i.split("/")[0], i.split("/")[0]) for i, (split, _) in found.items())
    assert_same_features(found, reference, id_of=lambda i: i.split("/", 1)[1])


def test_manifest_without_a_path_column_names_both_choices(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metadata.csv").write_text("name,label\na.wav,x\n")
    with pytest.raises(ConfigError, match="'path' column, or 'file_name'"):
        scan_dataset(tmp_path / "d")


# ---- a saved `datasets` dataset -----------------------------------------------------------

def save_hf(root: Path, corpus: Path, audio: str) -> Path:
    """The corpus as a DatasetDict (train: classes' first clips, test: the rest) whose audio
    column holds ``audio``: "bytes" (an Audio feature), "path" or "array" (decoded)."""
    datasets = pytest.importorskip("datasets")
    files = sorted(corpus.rglob("*.wav"))
    labels = sorted({p.parent.name for p in files})
    parts = {}
    for split, chosen in (("train", files[::2]), ("test", files[1::2])):
        columns = {"id": [p.relative_to(corpus).with_suffix("").as_posix() for p in chosen],
                   "label": [labels.index(p.parent.name) for p in chosen]}
        if audio == "bytes":
            columns["audio"] = [{"bytes": p.read_bytes(), "path": p.name} for p in chosen]
        elif audio == "path":
            columns["audio"] = [str(p) for p in chosen]
        else:
            columns["audio"] = [{"array": sf.read(p, dtype="float32")[0], "sampling_rate": 16000} for p in chosen]
        part = datasets.Dataset.from_dict(columns).cast_column("label", datasets.ClassLabel(names=labels))
        parts[split] = part.cast_column("audio", datasets.Audio()) if audio != "array" else part
    datasets.DatasetDict(parts).save_to_disk(str(root))
    return root


@pytest.mark.parametrize("audio", ["bytes", "path", "array"])
def test_saved_hf_dataset(tmp_path, folders, monkeypatch, audio):
    monkeypatch.setenv("TOKENLM_CACHE", str(tmp_path / "cache"))
    corpus, reference = folders
    root = save_hf(tmp_path / "hf", corpus, audio)
    layout, clips = scan_dataset(root, allow_outside=True)
    assert layout == "hf" and {c.label for c in clips} == {"class0", "class1"}
    assert {c.split for c in clips} == {"train", "test"}
    prepare(root, tmp_path / "run", progress=False)
    assert_same_features(features_by_id(tmp_path / "run"), reference)


def test_saved_hf_dataset_without_the_extra_says_which(tmp_path, monkeypatch):
    import sys

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'tokenlm\[hf\]'"):
        scan_dataset(tmp_path / "hf")


# ---- segments of a long recording -----------------------------------------------------------

CUTS = [(0.0, 0.3), (0.3, 0.65), (0.9, 1.4)]  # a gap between the 2nd and 3rd: not every second is used


@pytest.mark.parametrize("rate", [16000, 22050])
def test_segments_match_the_pieces_cut_out(tmp_path, rate):
    long = np.concatenate([sound(kind, 0.5, rate, seed=n) for n, kind in enumerate(["tone", "noise", "chirp"])])
    (tmp_path / "long").mkdir()
    sf.write(tmp_path / "long" / "rec.wav", long, rate, subtype="PCM_16")
    rows = [{"path": "rec.wav", "label": f"c{n % 2}", "start": a, "end": b} for n, (a, b) in enumerate(CUTS)]
    (tmp_path / "long" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pieces = tmp_path / "pieces"
    for n, (a, b) in enumerate(CUTS):
        (pieces / f"c{n % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(pieces / f"c{n % 2}" / f"rec@{a:g}-{b:g}.wav", long[round(a * rate):round(b * rate)], rate,
                 subtype="PCM_16")

    _, clips = scan_dataset(tmp_path / "long")
    assert [c.id for c in clips] == ["rec@0-0.3", "rec@0.3-0.65", "rec@0.9-1.4"]
    assert {c.group for c in clips} == {"rec"}  # one recording: one side of the split
    prepare(tmp_path / "long", tmp_path / "run_long", progress=False)
    prepare(pieces, tmp_path / "run_pieces", progress=False)
    piece_id = lambda clip_id: f"c{CUTS.index(_cut(clip_id)) % 2}/{clip_id}"  # noqa: E731 (the piece's folder)
    assert_same_features(features_by_id(tmp_path / "run_long"), features_by_id(tmp_path / "run_pieces"), piece_id)
    manifest = {r["id"]: r for r in read_jsonl(tmp_path / "run_long" / "manifest.jsonl")}
    assert [(manifest[c.id]["start"], manifest[c.id]["end"]) for c in clips] == CUTS
    assert manifest["rec@0.9-1.4"]["duration"] == pytest.approx(0.5, abs=1e-3)


def _cut(clip_id: str) -> tuple[float, float]:
    a, b = clip_id.split("@")[1].split("-")
    return float(a), float(b)


def test_a_span_streams_and_measures_like_its_piece(tmp_path):
    wav = sound("chirp", 1.0, 16000)
    sf.write(tmp_path / "a.wav", wav, 16000, subtype="FLOAT")
    span = Span(str(tmp_path / "a.wav"), 0.25, 0.75)
    piece = wav[4000:12000]
    np.testing.assert_array_equal(load_audio(span, 16000), piece)
    np.testing.assert_array_equal(np.concatenate(list(audio_blocks(span, 16000, block_seconds=0.1))), piece)
    assert audio_seconds(span) == 0.5 and audio_seconds(Span(span.path, 0.5)) == 0.5
    assert "[0.25-0.75 s]" in str(span)


def test_segments_are_checked(tmp_path):
    (tmp_path / "d").mkdir()
    sf.write(tmp_path / "d" / "a.wav", sound("tone", 0.5), 16000)
    (tmp_path / "d" / "manifest.csv").write_text("path,start,end\na.wav,0.4,0.2\n")
    with pytest.raises(ConfigError, match="0 <= start < end"):
        scan_dataset(tmp_path / "d")
    (tmp_path / "d" / "manifest.csv").write_text("path,start,end\na.wav,soon,0.2\n")
    with pytest.raises(ConfigError, match="must be seconds"):
        scan_dataset(tmp_path / "d")


def test_vocoder_and_encoder_read_only_the_span(tmp_path, tiny_run):
    """The tokenizer's codes and the vocoder's audio of a segment are those of its piece."""
    from tokenlm.data.splits import SplitConfig
    from tokenlm.pipeline.tokenize import encode_new_data
    from tokenlm.vocoder.training_data import load_aligned

    wav = np.concatenate([sound("tone", 1.0, seed=1), sound("noise", 1.0, seed=2)])
    (tmp_path / "long").mkdir()
    sf.write(tmp_path / "long" / "rec.wav", wav, 16000, subtype="FLOAT")
    (tmp_path / "long" / "manifest.csv").write_text("path,start,end,split\nrec.wav,0.5,1.5,train\n")
    (tmp_path / "piece").mkdir()
    sf.write(tmp_path / "piece" / "rec.wav", wav[8000:24000], 16000, subtype="FLOAT")
    (tmp_path / "piece" / "manifest.csv").write_text("path,id,split\nrec.wav,rec@0.5-1.5,train\n")
    codes = {}
    for name in ("long", "piece"):
        out = encode_new_data(tiny_run / "tokenizer", tmp_path / name, tmp_path / f"out_{name}", SplitConfig(),
                              codebook_size=8, device="cpu", progress=False)
        codes[name] = [np.array(c) for _, c in RaggedSplit(out, "train", "uint16")]
    np.testing.assert_array_equal(codes["long"][0], codes["piece"][0])
    row = {"id": "x", "path": str(tmp_path / "long" / "rec.wav"), "start": 0.5, "end": 1.5}
    np.testing.assert_array_equal(load_aligned(row, 10, 16000, 1600), wav[8000:24000])
