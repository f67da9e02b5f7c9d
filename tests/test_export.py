"""`tokenlm export`: every format reads back to exactly the codes of RUN/tokens/k{K}, and of
each task's tokens."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli, write_corpus

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import read_jsonl
from tokenlm.data.splits import SplitConfig
from tokenlm.data.store import RaggedSplit
from tokenlm.pipeline.export import export, read_export
from tokenlm.pipeline.prepare import prepare_task
from tokenlm.pipeline.tasks import task_at
from tokenlm.pipeline.tokenize import encode_task
from tokenlm.run.rundir import SPLITS, RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stored(tokens) -> dict:
    return {split: {row["id"]: np.array(codes) for row, codes in RaggedSplit(tokens, split, "uint16")}
            for split in SPLITS}


def assert_same(found: dict, expected: dict) -> None:
    expected = {s: c for s, c in expected.items() if c}  # an empty split has no file in npy or hf
    found = {s: c for s, c in found.items() if c}
    assert {s: sorted(c) for s, c in found.items()} == {s: sorted(c) for s, c in expected.items()}
    for split, clips in expected.items():
        for clip_id, codes in clips.items():
            assert found[split][clip_id].dtype == np.uint16
            np.testing.assert_array_equal(found[split][clip_id], codes)


@pytest.fixture(scope="module")
def run_with_task(tiny_run, tmp_path_factory):
    """A copy of the tiny run with one task encoded at K=8."""
    root = tmp_path_factory.mktemp("export")
    run = RunDir(shutil.copytree(tiny_run, root / "run"))
    task = task_at(run, write_corpus(root / "keys", labels=2, groups=2, clips=1))
    prepare_task(run, task, SplitConfig(), progress=False)
    encode_task(run, task, 8, device="cpu", progress=False)
    return run


@pytest.mark.parametrize("fmt", ["units", "npy", "hf"])
def test_each_format_round_trips_the_codes(run_with_task, tmp_path, fmt):
    if fmt == "hf":
        pytest.importorskip("datasets")
    out = tmp_path / fmt
    assert run_cli("export", run_with_task.root, "--format", fmt, "-K", 8, "--out", out) == 0
    assert_same(read_export(out, fmt), stored(run_with_task.tokens(8)))
    assert_same(read_export(out / "tasks" / "keys", fmt), stored(run_with_task.task("keys").tokens(8)))


def test_units_file_is_gslm_style(run_with_task, tmp_path):
    out = export(run_with_task, "units", out=tmp_path / "u")  # the run's current K
    first = (out / "train.units").read_text().splitlines()[0]
    clip_id, units = first.split("|")
    assert clip_id in stored(run_with_task.tokens(8))["train"] and all(u.isdigit() for u in units.split())


def test_default_folder_and_missing_codes(run_with_task):
    assert export(run_with_task, "npy") == run_with_task.root / "export" / "npy" / "k8"
    with pytest.raises(ArtifactError, match=r"no codes at K=16 \(it has: K=8\)"):
        export(run_with_task, "npy", codebook_size=16)


def test_each_format_reads_back_with_the_consumers_own_tools(run_with_task, tmp_path):
    """What a user's code sees, read without tokenlm: unit lines split by hand (fairseq/GSLM
    style), numpy.load of each clip's file, datasets.load_from_disk."""
    expected = stored(run_with_task.tokens(8))
    units = export(run_with_task, "units", codebook_size=8, out=tmp_path / "units")
    for split, clips in expected.items():
        lines = (units / f"{split}.units").read_text().splitlines()
        parsed = {line.split("|")[0]: [int(u) for u in line.split("|")[1].split()] for line in lines}
        assert parsed == {clip_id: codes.tolist() for clip_id, codes in clips.items()}
    npy = export(run_with_task, "npy", codebook_size=8, out=tmp_path / "npy")
    rows = [json.loads(line) for line in (npy / "index.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(i for clips in expected.values() for i in clips)
    for row in rows:
        codes = np.load(npy / row["file"])
        assert codes.dtype == np.uint16 and codes.tolist() == expected[row["split"]][row["id"]].tolist()
    datasets = pytest.importorskip("datasets")
    hf = export(run_with_task, "hf", codebook_size=8, out=tmp_path / "hf")
    loaded = datasets.load_from_disk(str(hf))
    for split, clips in expected.items():
        name = split  # one split vocabulary: train, val, test
        if not clips:
            assert name not in loaded
            continue
        assert {row["id"]: row["codes"] for row in loaded[name]} == {i: c.tolist() for i, c in clips.items()}
    with pytest.raises(ArtifactError, match="no such run folder"):
        export(run_with_task.root.parent / "nope", "units")


def test_one_split_vocabulary_and_class_labels_in_hf(run_with_task, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = export(run_with_task, "hf", out=tmp_path / "hf")
    saved = datasets.load_from_disk(str(out))
    assert set(saved) <= {"train", "val", "test"} and "val" in saved  # tokenlm's names, as units and npy
    label = saved["train"].features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.names == sorted(label.names)
    expected = {row["id"]: row["label"] for row in RaggedSplit(run_with_task.tokens(8), "train", "uint16").rows}
    assert {row["id"]: label.int2str(row["label"]) for row in saved["train"]} == expected
    units = export(run_with_task, "units", out=tmp_path / "u")
    assert sorted(p.name for p in units.glob("*.units")) == ["test.units", "train.units", "val.units"]


def test_encode_only_output_exports_without_k_as_one_stream(tiny_run, tmp_path, capsys):
    folder = tmp_path / "my_audio"  # an unlabelled folder of audio, no splits
    write_corpus(tmp_path / "src", labels=1, groups=1, clips=3)
    folder.mkdir()
    for n, path in enumerate(sorted((tmp_path / "src").rglob("*.wav"))):
        shutil.copy(path, folder / f"clip{n}.wav")
    out = tmp_path / "units_out"
    assert run_cli("tokenize", out, "--tokenizer", tiny_run / "tokenizer", "--data", folder) == 0
    assert run_cli("export", out, "--format", "units") == 0  # no -K: the only K there is
    target = out / "export" / "units" / "k8"
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == ["all.units"]  # no labels file
    found = read_export(target, "units")
    assert sorted(found["all"]) == [f"clip{n}" for n in range(3)]
    stored_codes = stored(RunDir(out).tokens(8))
    assert_same({"train": found["all"]}, stored_codes)
    npy = export(out, "npy", out=tmp_path / "npy")
    assert {row["split"] for row in read_jsonl(npy / "index.jsonl")} == {"all"}
    capsys.readouterr()
    assert run_cli("export", out, "--format", "units", "-K", 16) == 1
    assert "has no codes at K=16 (it has: K=8)" in capsys.readouterr().err
    assert run_cli("export", tmp_path / "not_made", "--format", "units") == 1
    assert "no such run folder" in capsys.readouterr().err
@pytest.mark.parametrize("levels, groups, whiten", [(1, 1, False), (2, 1, False), (3, 1, False), (1, 2, False),
                                                    (2, 1, True)])
def test_codes_of_every_quantiser_round_trip_through_export_and_decode(tiny_run, tmp_path, levels, groups, whiten):
    """One code per patch, residual levels and product groups: tokens store (patches, levels),
    every format reads them back exactly, and decoding the exported codes is decoding the
    codebook's reconstruction of them (sum of levels' centroids, or the groups side by side)."""
    import torch

    from tokenlm.pipeline.tokenize import encode_run_stage, fit_codebook_stage
    from tokenlm.run.rundir import read_tokens_meta
    from tokenlm.tokenizer.codebook import CodebookConfig
    from tokenlm.tokenizer.tokenizer import AudioTokenizer

    run = RunDir(shutil.copytree(tiny_run, tmp_path / "run"))
    fit_codebook_stage(run, 8, CodebookConfig(niter=5), device="cpu", levels=levels, groups=groups, whiten=whiten)
    encode_run_stage(run, 8, device="cpu", progress=False)
    width = max(levels, groups)
    assert read_tokens_meta(run.tokens(8)).levels == width
    expected = {split: {row["id"]: np.array(codes) for row, codes in RaggedSplit(run.tokens(8), split, "uint16",
                                                                                 width=width)}
                for split in SPLITS}
    some = next(c for clips in expected.values() for c in clips.values())
    assert some.shape[1:] == (() if width == 1 else (width,))
    tokenizer = AudioTokenizer.load(run.tokenizer, codebook_size=8, device="cpu")
    assert tokenizer.levels == width
    for fmt in ("units", "npy") + (("hf",) if _has_datasets() else ()):
        found = read_export(export(run, fmt, 8, tmp_path / fmt), fmt)
        assert_same(found, expected)
    codes = some.astype(np.int64)
    frames = tokenizer.decode(codes)
    assert frames.shape == (len(codes) * tokenizer.patch_frames, tokenizer.coder.features.n_mels)
    books = tokenizer.quantizer.codebooks
    parts = [books[level][codes.reshape(len(codes), -1)[:, level]] for level in range(width)]
    z = np.concatenate(parts, axis=1) if groups > 1 else np.sum(parts, axis=0)
    if whiten:  # the centroids live in the whitened space (whitening.npy beside the codebook)
        from tokenlm.tokenizer.quantizers import unwhiten

        assert (run.codebook(8) / "whitening.npy").is_file()
        z = unwhiten(z, tokenizer.quantizer.whitening)
    with torch.no_grad():
        expected_frames = tokenizer.coder.frames_from_patches(tokenizer.coder.autoencoder.decode(torch.from_numpy(z)))
    torch.testing.assert_close(frames, expected_frames)
    if width > 1:
        with pytest.raises(ValueError, match="codes of shape"):
            tokenizer.decode(codes[:, 0])


def _has_datasets() -> bool:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True
