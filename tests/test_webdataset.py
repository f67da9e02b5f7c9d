"""WebDataset tar shards as input (issue 13): the same clips packed into shards give the same
features as in folders, members are decoded in place, and bad shards or members are one line
or a recorded skip."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli, write_corpus

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.fileio import read_jsonl
from tokenlm.data.audio import load_audio, row_source
from tokenlm.data.files import check_unchanged, file_stamp
from tokenlm.data.layouts import detect_layout, scan_dataset
from tokenlm.data.store import RaggedSplit
from tokenlm.data.tar_member import TarMember
from tokenlm.data.webdataset import expand_braces, read_webdataset
from tokenlm.pipeline.prepare import prepare
from tokenlm.run.rundir import MANIFEST, META


def pack(folder: Path, out: Path, shards: int = 2, meta: str = "json") -> list[Path]:
    """The folder-per-class clips of ``folder`` packed into ``shards`` tar files, WebDataset
    style: <label>/<name>.wav beside <label>/<name>.json ({"label"}) or .cls; consecutive files
    per shard, so the clips keep the folders' order (and the features' statistics their sums)."""
    files = sorted(folder.rglob("*.wav"))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(shards):
        path = out / f"train-{n:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for file in files[n * len(files) // shards:(n + 1) * len(files) // shards]:
                rel = file.relative_to(folder)
                tar.add(file, arcname=rel.as_posix())
                label = rel.parts[0]
                add_bytes(tar, rel.with_suffix(f".{meta}").as_posix(),
                          json.dumps({"label": label}) if meta == "json" else label)
        paths.append(path)
    return paths


def add_bytes(tar: tarfile.TarFile, name: str, data: str | bytes) -> None:
    data = data.encode() if isinstance(data, str) else data
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(a folder-per-class corpus, a folder of 2 shards holding the same files)."""
    root = tmp_path_factory.mktemp("wds")
    folders = write_corpus(root / "folders", labels=3, groups=2, clips=2, seconds=0.5)
    pack(folders, root / "shards")
    return folders, root / "shards"


def test_shards_give_the_same_features_as_folders(corpus, tmp_path):
    folders, shards = corpus
    assert detect_layout(shards) == "webdataset"
    features = {name: prepare(data, tmp_path / name, progress=False)
                for name, data in (("folders", folders), ("shards", shards))}
    metas = {name: json.loads((out / META).read_text()) for name, out in features.items()}
    assert metas["shards"]["layout"] == "webdataset"
    for key in ("norm", "classes", "splits", "seconds", "clips_ok", "clips_skipped"):
        assert metas["shards"][key] == metas["folders"][key], key
    for split in ("train", "val", "test"):
        a, b = (RaggedSplit(out, split, "float16", width=metas["folders"]["n_mels"]) for out in features.values())
        by_id = {row["id"]: (row["label"], np.asarray(frames)) for row, frames in b}
        assert len(a) == len(b)
        for row, frames in a:
            label, other = by_id[row["id"]]
            assert label == row["label"] and np.array_equal(frames, other), row["id"]
    rows = {name: read_jsonl(out / MANIFEST) for name, out in features.items()}
    same = ("id", "label", "split", "duration", "status")
    assert [{k: r[k] for k in same} for r in rows["shards"]] == [{k: r[k] for k in same} for r in rows["folders"]]


def test_a_manifest_row_names_its_member_and_decodes_again(corpus, tmp_path):
    folders, _ = corpus
    shards = tmp_path / "shards"
    shutil.copytree(corpus[1], shards)
    out = prepare(shards, tmp_path / "run", progress=False, hash_content=True)
    row = json.loads(json.dumps(read_jsonl(out / MANIFEST)[0]))  # as every later stage reads it
    source = row_source(row)
    assert isinstance(source, TarMember) and str(source) == row["path"]
    assert row["path"].startswith(f"{(shards / 'train-000000.tar').resolve()}#")
    assert row["path"].endswith(f"/{row['id']}.wav")
    original = folders / f"{row['id']}.wav"
    assert np.array_equal(load_audio(source, 16000), load_audio(original, 16000))
    # stamped by its tar, hashed by its own bytes: the packed file's hash
    assert row["file"]["sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
    assert {k: v for k, v in row["file"].items() if k != "sha256"} == file_stamp(source.tar)
    check_unchanged(row)
    subset = tmp_path / "subset.jsonl"  # a manifest may list members (a run's subset does)
    subset.write_text(json.dumps({"id": row["id"], "path": row["path"]}) + "\n")
    assert scan_dataset(subset, allow_outside=True)[1][0].path == row["path"]
    with open(source.tar, "ab") as tar:  # the shard is rewritten: its members may have moved
        tar.write(bytes(tarfile.BLOCKSIZE))
    with pytest.raises(ArtifactError, match="changed since `tokenlm prepare` read it"):
        check_unchanged(row)


def test_tokenize_encodes_shards_like_folders(corpus, tmp_path, tiny_run):
    """New data through the tokenize path (row_source, stamps checked): the same codes."""
    from tokenlm.data.splits import SplitConfig
    from tokenlm.pipeline.tokenize import encode_new_data
    from tokenlm.vocoder.training_data import load_aligned

    codes = {}
    for name, data in zip(("folders", "shards"), corpus):
        out = encode_new_data(tiny_run / "tokenizer", data, tmp_path / name, SplitConfig(), codebook_size=8,
                              device="cpu", progress=False, hash_content=True)
        codes[name] = {row["id"]: np.array(c) for split in ("train", "val", "test")
                       for row, c in RaggedSplit(out, split, "uint16")}
    assert codes["shards"].keys() == codes["folders"].keys()
    assert all(np.array_equal(codes["shards"][i], codes["folders"][i]) for i in codes["folders"])
    row = read_jsonl(tmp_path / "shards" / "manifest.jsonl")[0]
    wav = load_audio(corpus[0] / f"{row['id']}.wav", 16000)
    np.testing.assert_array_equal(load_aligned(row, 2, 16000, 1600), wav[:3200])  # the vocoder's read


def test_globs_and_brace_ranges_name_shards(corpus):
    _, shards = corpus
    everything = scan_dataset(shards)
    for pattern in ("train-*.tar", "train-{000000..000001}.tar", "train-00000{0,1}.tar"):
        assert scan_dataset(shards / pattern) == everything, pattern
    layout, first = scan_dataset(shards / "train-000000.tar")
    assert layout == "webdataset" and first == [c for c in everything[1] if "train-000000.tar#" in c.path]
    assert expand_braces("a-{08..10}-{x,y}.tar") == ["a-08-x.tar", "a-08-y.tar", "a-09-x.tar", "a-09-y.tar",
                                                       "a-10-x.tar", "a-10-y.tar"]
    with pytest.raises(ConfigError, match="no tar shards match"):
        scan_dataset(shards / "valid-*.tar")
    with pytest.raises(ConfigError, match="shard not found: .*train-000002.tar"):
        scan_dataset(shards / "train-{000000..000002}.tar")


def test_labels_from_cls_members(corpus, tmp_path):
    folders, _ = corpus
    pack(folders, tmp_path / "cls", shards=1, meta="cls")
    _, clips = scan_dataset(tmp_path / "cls")
    assert [c.label for c in clips] == [c.id.split("/")[0] for c in clips] and len(clips) == 12


def test_a_compressed_shard_is_one_line(corpus, tmp_path, capsys):
    folders, _ = corpus
    with tarfile.open(tmp_path / "train-000000.tar.gz", "w:gz") as tar:
        tar.add(next(folders.rglob("*.wav")), arcname="a.wav")
    with pytest.raises(ConfigError, match="must be plain .tar"):
        scan_dataset(tmp_path / "train-000000.tar.gz")
    code = run_cli("prepare", "--data", tmp_path / "train-*.tar.gz", "--out", tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    assert "must be plain .tar" in err
    (tmp_path / "renamed.tar").write_bytes((tmp_path / "train-000000.tar.gz").read_bytes())
    with pytest.raises(ConfigError, match="renamed.tar is gzip-compressed: WebDataset shards must be plain"):
        scan_dataset(tmp_path / "renamed.tar")


def test_bad_members_are_recorded_skips(corpus, tmp_path):
    folders, _ = corpus
    shard = pack(folders, tmp_path / "bad", shards=1)[0]
    with tarfile.open(shard, "a") as tar:
        add_bytes(tar, "broken/noise.wav", b"RIFF\x00\x00not a wave file at all")
        add_bytes(tar, "broken/noise.json", json.dumps({"label": "class0"}))
        add_bytes(tar, "lonely.json", json.dumps({"label": "class1"}))
        add_bytes(tar, "garbled.wav", (folders / "class0" / "class0_g0_0.wav").read_bytes())
        add_bytes(tar, "garbled.json", "{not json")
    out = prepare(tmp_path / "bad", tmp_path / "run", progress=False)
    # the name at the end of each skipped path: a member's, or the tar's #key
    skipped = {r["path"].rsplit("/", 1)[-1].rsplit("#", 1)[-1]: r["reason"]
               for r in read_jsonl(out / MANIFEST) if r["status"] != "ok"}
    assert skipped.keys() == {"noise.wav", "lonely", "garbled"}
    assert skipped["noise.wav"].startswith("cannot decode")
    assert skipped["lonely"] == "no audio member (lonely.json)"
    assert skipped["garbled"].startswith("garbled.json is not valid JSON")


def test_a_damaged_header_keeps_what_came_before_it(corpus, tmp_path):
    folders, _ = corpus
    shard = pack(folders, tmp_path / "damaged", shards=1)[0]
    with tarfile.open(shard) as tar:
        third = tar.getmembers()[4].offset  # the third sample's first header
    with open(shard, "r+b") as f:
        f.seek(third)
        f.write(b"garbage" * 20)
    skipped = []
    clips = read_webdataset(tmp_path / "damaged", skipped)
    assert [c.id for c in clips] == [c.id for c in scan_dataset(folders)[1][:2]]
    assert skipped == [{"path": str(shard.resolve()), "reason": f"damaged tar header at byte {third}: "
                                                                f"the rest of the shard is not read"}]


def test_layout_detection(corpus, tmp_path):
    _, shards = corpus
    assert detect_layout(shards / "train-000000.tar") == "webdataset"
    assert detect_layout(shards / "train-*.tar") == "webdataset"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.tar").write_bytes((shards / "train-000000.tar").read_bytes())
    (mixed / "b.wav").write_bytes(b"")
    assert detect_layout(mixed) == "folders"


def test_a_member_streams_in_blocks_as_its_file_does(tmp_path):
    """Long clips are decoded block by block, straight from the tar (and a span of one too)."""
    from conftest import sound

    from tokenlm.data.audio import audio_blocks, audio_seconds, audio_source

    file = tmp_path / "long.flac"
    sf.write(file, np.concatenate([sound("tone", 1.0, seed=1), sound("chirp", 1.0, seed=2)]), 16000)
    with tarfile.open(tmp_path / "one.tar", "w") as tar:
        tar.add(file, arcname="long.flac")
    (clip,) = scan_dataset(tmp_path / "one.tar")[1]
    for start, end in ((None, None), (0.3, 1.7)):
        member, plain = audio_source(clip.path, start, end), audio_source(str(file), start, end)
        assert audio_seconds(member) == audio_seconds(plain)
        for rate in (16000, 8000):  # as stored; resampled block by block
            blocks = [list(audio_blocks(source, rate, block_seconds=0.25)) for source in (member, plain)]
            assert len(blocks[0]) > 1 and np.array_equal(np.concatenate(blocks[0]), np.concatenate(blocks[1]))


def test_data_pack_writes_shards_tokenlm_reads_as_the_folder(corpus, tmp_path, capsys):
    folders, _ = corpus
    assert run_cli("data", "pack", folders, "--out", tmp_path / "a", "--clips-per-shard", 5) == 0
    assert "12 clips in 3 shard(s)" in capsys.readouterr().out
    layout, packed = scan_dataset(tmp_path / "a")
    plain = scan_dataset(folders)[1]
    assert layout == "webdataset" and [(c.id, c.label) for c in packed] == [(c.id, c.label) for c in plain]
    assert file_stamp(packed[0].path, hash_content=True)["sha256"] == file_stamp(plain[0].path, True)["sha256"]
    # again, from the shards themselves: the same bytes
    assert run_cli("data", "pack", tmp_path / "a", "--out", tmp_path / "b", "--clips-per-shard", 5) == 0
    assert [p.read_bytes() for p in sorted((tmp_path / "a").iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "b").iterdir())]
    assert run_cli("data", "pack", folders, "--out", tmp_path / "a") == 1
    assert "is not empty" in capsys.readouterr().err
