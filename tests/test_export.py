"""`tokenlm export`: every format reads back to exactly the codes of RUN/tokens/k{K}, and of
each task's tokens."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import run_cli, write_corpus
from tokenlm.errors import ArtifactError
from tokenlm.rundir import SPLITS, RunDir
from tokenlm.splits import SplitConfig
from tokenlm.stages.export import export, read_export
from tokenlm.store import RaggedSplit
from tokenlm.tasks import encode_task, prepare_task, task_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stored(tokens) -> dict:
    return {split: {row["id"]: np.array(codes) for row, codes in RaggedSplit(tokens, split, "uint16")}
            for split in SPLITS}


def assert_same(found: dict, expected: dict) -> None:
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
    with pytest.raises(ArtifactError, match="tokenize"):
        export(run_with_task, "npy", codebook_size=16)


@pytest.mark.parametrize("levels, groups, whiten", [(1, 1, False), (2, 1, False), (3, 1, False), (1, 2, False),
                                                    (2, 1, True)])
def test_codes_of_every_quantiser_round_trip_through_export_and_decode(tiny_run, tmp_path, levels, groups, whiten):
    """One code per patch, residual levels and product groups: tokens store (patches, levels),
    every format reads them back exactly, and decoding the exported codes is decoding the
    codebook's reconstruction of them (sum of levels' centroids, or the groups side by side)."""
    import torch

    from tokenlm.codebook import CodebookConfig
    from tokenlm.rundir import read_tokens_meta
    from tokenlm.stages.tokenize import encode_run_stage, fit_codebook_stage
    from tokenlm.tokenizer import AudioTokenizer

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
        from tokenlm.quantizers import unwhiten

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
