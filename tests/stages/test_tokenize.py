"""The tokenize stage and command: reuse across K, determinism, skipped clips, metrics,
encoding new data, and the one-line error path. Everything runs through ``tokenlm.cli.main``."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import Crash, crash_and_resume, sound
from tests.conftest import run_cli as tokenlm
from tokenlm.core.fileio import read_json, read_jsonl
from tokenlm.data.store import RaggedSplit
from tokenlm.tokenizer.tokenizer import AudioTokenizer, load_patch_coder

SR = 16000
RECIPE = """\
tokenizer:
  autoencoder: {hidden: [64, 32], bottleneck: 8}
  training: {epochs: 6, batch_size: 32}
codebook: {niter: 10}
"""


# one torch thread (conftest): clip-sized ops gain nothing from more, and on a busy
# machine the spin-waits of idle OpenMP threads slow them down by orders of magnitude
pytestmark = pytest.mark.usefixtures("one_torch_thread")



def write_corpus(root: Path, per_label: int = 6, seed: int = 0) -> Path:
    """DIR/<label>/*.wav: tones, noises and chirps of 1-1.5 s, one stereo 22.05 kHz file
    (resampled and mixed on the way in) and one corrupt file (skipped and recorded)."""
    for label in ("tone", "noise", "chirp"):
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            sf.write(root / label / f"{label}_{i}.wav", sound(label, 1.0 + 0.1 * i, seed=seed + i), SR,
                     subtype="PCM_16")
    stereo = sound("chirp", 1.2, sr=22050, seed=seed + 9)
    sf.write(root / "chirp" / "chirp_stereo.wav", np.stack([stereo, 0.5 * stereo], 1), 22050, subtype="PCM_16")
    (root / "noise" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    return root



def tree(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (stage.json left out: it holds wall times)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "stage.json"}


def stored_codes(tokens: Path) -> dict[str, np.ndarray]:
    """clip id -> codes, over every split of a tokens folder."""
    out = {}
    for split in ("train", "val", "test"):
        store = RaggedSplit(tokens, split, "uint16")
        for row, codes in store:
            out[row["id"]] = np.array(codes)
    return out


def api_codes(tokenizer: AudioTokenizer, path: str) -> np.ndarray:
    wav, sr = sf.read(path, dtype="float32")
    return tokenizer.encode(wav, sr).numpy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "data")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus, recipe) -> Path:
    """A run tokenized with K=4 by the command. Shared by the module, so read-only: a test
    that runs the command on it again works on ``own_run``."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert tokenlm("tokenize", "--data", corpus, "--out", run, "--config", recipe, "-K", 4, "--device", "cpu") == 0
    return run


@pytest.fixture
def own_run(run, tmp_path) -> Path:
    """This test's own copy of ``run``, free to change (other tests see the original)."""
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_layout_and_skipped_clip(run, corpus):
    for name in ("manifest.jsonl", "features/stage.json", "tokenizer/stage.json", "tokenizer/config.json",
                 "tokenizer/autoencoder.safetensors", "tokenizer/metrics.json", "tokenizer/k4/codebook.npy",
                 "tokenizer/k4/metrics.json", "tokens/k4/meta.json", "tokens/k4/train.bin"):
        assert (run / name).is_file(), name
    assert read_json(run / "tokenizer" / "current.json") == {"codebook_size": 4}
    assert np.load(run / "tokenizer" / "k4" / "codebook.npy").shape == (4, 8)
    manifest = {r["id"]: r for r in read_jsonl(run / "manifest.jsonl")}
    assert len(manifest) == 20
    broken = manifest["noise/broken"]
    assert broken["status"] == "skipped" and broken["reason"].startswith("cannot decode")
    assert all(r["status"] == "ok" and r["reason"] is None for i, r in manifest.items() if i != "noise/broken")
    assert manifest["chirp/chirp_stereo"]["duration"] == pytest.approx(1.2, abs=1e-3)
    codes = stored_codes(run / "tokens" / "k4")
    assert set(codes) == set(manifest) - {"noise/broken"}  # every usable clip, in its split
    meta = read_json(run / "tokens" / "k4" / "meta.json")
    assert meta["codebook_size"] == 4 and meta["code_rate"] == 20.0 and meta["dtype"] == "uint16"
    assert sum(meta["clips"].values()) == 19 and meta["skipped"] == []
    for split in ("train", "val", "test"):
        ids = {r["id"] for r in read_jsonl(run / "tokens" / "k4" / f"{split}.index.jsonl")}
        assert ids == {i for i, r in manifest.items() if r["split"] == split and r["status"] == "ok"}
    # codes per clip: one per 5 frames of a centred STFT with a 160-sample hop
    assert all(len(c) == (1 + round(manifest[i]["duration"] * SR) // 160) // 5 for i, c in codes.items())
    assert all(c.max() < 4 for c in codes.values())


def test_stored_tokens_equal_the_api_on_each_file(run):
    tokenizer = AudioTokenizer.load(run / "tokenizer")
    manifest = {r["id"]: r for r in read_jsonl(run / "manifest.jsonl")}
    for clip_id, codes in stored_codes(run / "tokens" / "k4").items():
        np.testing.assert_array_equal(codes, api_codes(tokenizer, manifest[clip_id]["path"]), err_msg=clip_id)


def test_two_fresh_runs_are_byte_identical(run, corpus, recipe, tmp_path):
    again = tmp_path / "again"
    assert tokenlm("tokenize", "--data", corpus, "--out", again, "--config", recipe, "-K", 4, "--device", "cpu") == 0
    volatile = {"tokenizer_dir", "fit_seconds"}  # the run's own folder; a timing
    for folder in ("features", "tokenizer", "tokens/k4"):
        first, second = tree(run / folder), tree(again / folder)
        assert first.keys() == second.keys(), folder
        for name in first:
            if name.endswith(".json"):
                a, b = read_json(run / folder / name), read_json(again / folder / name)
                assert {k: v for k, v in a.items() if k not in volatile} == \
                       {k: v for k, v in b.items() if k not in volatile}, f"{folder}/{name}"
            else:
                assert first[name] == second[name], f"{folder}/{name}"  # codes, codebook, features, indexes
    assert read_json(run / "tokenizer" / "stage.json")["key"] == read_json(again / "tokenizer" / "stage.json")["key"]


def test_metrics(run):
    ae = read_json(run / "tokenizer" / "metrics.json")
    assert 0 < ae["recon_rmse_db"] < 40 and 0 < ae["recon_relative_mse"] < 1
    assert ae["recon_patches"] > 0 and 1 <= ae["best_epoch"] <= ae["epochs_run"] <= 6
    assert len(ae["history"]) == ae["epochs_run"]
    assert ae["best_val_mse"] == min(h["val_mse"] for h in ae["history"])

    cb = read_json(run / "tokenizer" / "k4" / "metrics.json")
    train_tokens = len(RaggedSplit(run / "tokens" / "k4", "train", "uint16").data)
    hist = np.array(cb["histogram"])
    assert len(hist) == cb["k"] == 4
    assert hist.sum() == cb["tokens"] == train_tokens  # no train clip is shorter than a patch
    assert cb["dead_codes"] == int((hist == 0).sum()) and cb["used_codes"] == 4 - cb["dead_codes"]
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum())
    assert cb["entropy_bits"] == pytest.approx(entropy)
    assert cb["perplexity"] == pytest.approx(2**entropy)
    assert cb["bits_per_second"] == pytest.approx(entropy * 20.0)  # entropy x frame rate
    assert 1 <= cb["perplexity"] <= 4
    assert cb["recon_rmse_db"] >= cb["autoencoder_recon_rmse_db"] > 0  # quantising loses something

    # Inertia: the mean squared distance of the train split's bottleneck vectors to their
    # nearest centroid, recomputed by brute force from the stored features.
    coder = load_patch_coder(run / "tokenizer")
    frames = RaggedSplit(run / "features", "train", "float16", width=64)
    with torch.no_grad():
        z = torch.cat([coder.embed_frames(torch.from_numpy(np.asarray(f, np.float32))) for _, f in frames])
    centroids = torch.from_numpy(np.load(run / "tokenizer" / "k4" / "codebook.npy"))
    nearest = torch.cdist(z.double(), centroids.double()).min(1).values.square()
    assert len(z) == train_tokens
    assert cb["inertia"] == pytest.approx(float(nearest.mean()), rel=1e-3)
    assert cb["relative_quantisation_error"] == pytest.approx(cb["inertia"] / float(z.double().var(0).sum()), rel=1e-2)


def test_new_codebook_size_reuses_the_autoencoder(own_run, capsys):
    """``-K 8`` after ``-K 4``, without repeating the recipe: the autoencoder is kept (its
    settings come from the run), only the K=8 codebook and tokens are new."""
    run = own_run
    def state(path: Path):
        stage = path / "stage.json"
        return stage.stat().st_mtime_ns, read_json(stage)["key"]

    before = {name: state(run / name) for name in ("features", "tokenizer", "tokenizer/k4", "tokens/k4")}
    autoencoder = (run / "tokenizer" / "autoencoder.safetensors").read_bytes()
    capsys.readouterr()
    assert tokenlm("tokenize", "--out", run, "-K", 8, "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert "autoencoder up to date" in err
    assert {name: state(run / name) for name in before} == before
    assert (run / "tokenizer" / "autoencoder.safetensors").read_bytes() == autoencoder
    for name in ("tokenizer/k4", "tokenizer/k8", "tokens/k4", "tokens/k8"):
        assert (run / name / "stage.json").is_file(), name
    assert np.load(run / "tokenizer" / "k8" / "codebook.npy").shape == (8, 8)
    assert read_json(run / "tokens" / "k8" / "meta.json")["codebook_size"] == 8
    assert read_json(run / "tokenizer" / "current.json") == {"codebook_size": 8}
    assert AudioTokenizer.load(run / "tokenizer").codebook_size == 8

    # The same command again does nothing; nor does the original one.
    done = {name: state(run / name) for name in ("tokenizer", "tokenizer/k8", "tokens/k8", "tokenizer/k4")}
    assert tokenlm("tokenize", "--out", run, "-K", 8, "--device", "cpu") == 0
    assert {name: state(run / name) for name in done} == done
    err = capsys.readouterr().err
    assert "codebook K=8 up to date" in err and "tokens K=8 up to date" in err


def test_rerunning_the_first_command_does_nothing(own_run, corpus, recipe, capsys):
    run = own_run
    before = {p: p.stat().st_mtime_ns for p in run.rglob("stage.json")}
    capsys.readouterr()
    assert tokenlm("tokenize", "--data", corpus, "--out", run, "--config", recipe, "-K", 4, "--device", "cpu") == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("stage.json")} == before
    err = capsys.readouterr().err
    for what in ("features", "autoencoder", "codebook K=4", "tokens K=4"):
        assert f"{what} up to date" in err


def test_encode_new_data_with_a_trained_tokenizer(run, tmp_path):
    new = tmp_path / "new"
    for label, kind in (("whistle", "tone"), ("hiss", "noise")):
        (new / label).mkdir(parents=True)
        for i in range(3):
            sf.write(new / label / f"{label}_{i}.wav", sound(kind, 0.8 + 0.3 * i, seed=20 + i), SR)
    sf.write(new / "hiss" / "hiss_44k.wav", sound("noise", 1.0, sr=44100, seed=30), 44100)
    (new / "hiss" / "empty.wav").write_bytes(b"")
    out = tmp_path / "out"
    assert tokenlm("tokenize", "--tokenizer", run / "tokenizer" / "k4", "--data", new, "--out", out, "--device", "cpu") == 0

    tokens = out / "tokens" / "k4"
    meta = read_json(tokens / "meta.json")
    assert meta["codebook_size"] == 4 and meta["code_rate"] == 20.0
    assert [s["id"] for s in meta["skipped"]] == ["hiss/empty"]
    tokenizer = AudioTokenizer.load(run / "tokenizer" / "k4")
    assert meta["tokenizer_hash"] == tokenizer.info["tokenizer_hash"]
    codes = stored_codes(tokens)
    assert len(codes) == 7
    for clip_id, stored in codes.items():
        np.testing.assert_array_equal(stored, api_codes(tokenizer, str(new / f"{clip_id}.wav")), err_msg=clip_id)
    manifest = {r["id"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert manifest["hiss/empty"]["status"] == "skipped" and manifest["hiss/empty"]["reason"]
    assert manifest["hiss/hiss_44k"]["status"] == "ok" and manifest["hiss/hiss_44k"]["duration"] == 1.0

    # --strict turns the skipped clip into a failure (exit 1) after writing the stage's manifest
    # (in its work folder: OUT/manifest.jsonl is published only by a finished stage).
    strict = tmp_path / "strict"
    assert tokenlm("tokenize", "--tokenizer", run / "tokenizer", "--data", new, "--out", strict, "--strict") == 1
    assert read_jsonl(next((strict / "tokens").glob(".k4.partial-*/manifest.jsonl")))
    assert not (strict / "manifest.jsonl").exists()
    assert not list((strict / "tokens").rglob("stage.json"))  # nothing that looks finished


def test_new_data_never_overwrites_a_training_run(run, corpus, capsys):
    before = (run / "manifest.jsonl").read_bytes(), tree(run / "tokens")
    assert tokenlm("tokenize", "--tokenizer", run / "tokenizer", "--data", corpus, "--out", run) == 1
    assert "is a training run" in capsys.readouterr().err
    assert ((run / "manifest.jsonl").read_bytes(), tree(run / "tokens")) == before


def test_encoding_restores_thread_counts(run, tmp_path):
    """encode_clips runs torch and FAISS single-threaded (clip-sized work) and gives the
    caller's settings back."""
    from tokenlm.tokenizer.encoding import encode_clips
    from tokenlm.tokenizer.faiss_runtime import faiss

    rows = [r for r in read_jsonl(run / "manifest.jsonl") if r["status"] == "ok"][:3]
    faiss_before = faiss.omp_get_max_threads()
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    try:
        meta = encode_clips(AudioTokenizer.load(run / "tokenizer" / "k4"), rows, tmp_path, progress=False)
        assert torch.get_num_threads() == 2 and faiss.omp_get_max_threads() == 2
    finally:
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(faiss_before)
    assert sum(meta["clips"].values()) == 3
    codes = stored_codes(tmp_path)
    expected = stored_codes(run / "tokens" / "k4")
    assert all(np.array_equal(codes[i], expected[i]) for i in codes)


def test_error_without_features_or_data_is_one_line(tmp_path, capsys):
    assert tokenlm("tokenize", "--out", tmp_path / "nothing", "-K", 4) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "has no features yet: pass --data DIR" in err
    assert len(err.splitlines()) == 1
    assert tokenlm("tokenize", "--tokenizer", tmp_path / "nothing") == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_autoencoder_training_resumes_exactly_after_an_interruption(run, tmp_path, capsys):
    """The autoencoder trains on the shared loop: a crash early in epoch 2 and a rerun in the
    same folder end with the weights and metrics of an uninterrupted run."""
    from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
    from tokenlm.run.rundir import RunDir, read_feature_meta
    from tokenlm.tokenizer.fit import PatchSampler, fit_autoencoder
    from tokenlm.tokenizer.tokenizer import AutoencoderTraining, PatchCoder

    meta = read_feature_meta(RunDir(run).features)
    features, norm = meta.config, {"mean": meta.norm_mean, "std": meta.norm_std}

    def fit(folder, callbacks=()):
        torch.manual_seed(0)
        autoencoder = PatchAutoencoder(features.patch_dim, AutoencoderConfig(hidden=(16, 8), bottleneck=4))
        coder = PatchCoder(features, norm["mean"], norm["std"], autoencoder)
        train, val = (PatchSampler(run / "features", split, features, coder) for split in ("train", "val"))
        metrics = fit_autoencoder(coder, train, val, AutoencoderTraining(epochs=3, batch_size=32),
                                   torch.device("cpu"), False, folder, callbacks)
        return autoencoder.state_dict(), metrics

    first_epoch = []  # the step that ended it

    def crash_early_in_epoch_2(step, record):
        if first_epoch:
            raise Crash
        if "val_mse" in record:
            first_epoch.append(step)

    (reference, ref_metrics), (resumed, metrics), err = crash_and_resume(fit, tmp_path, capsys, crash_early_in_epoch_2)
    assert f"resuming from step {first_epoch[0]}" in err
    assert metrics == ref_metrics and metrics["epochs_run"] == 3
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


@pytest.mark.parametrize("points_per_centroid", [1000, 20])
def test_codebook_encodes_only_its_k_means_sample(run, points_per_centroid):
    """The codebook stage reads and encodes only the patches of its k-means sample: exactly
    the patches fit_codebook would draw from every train bottleneck (all of them when the
    budget covers the split), and the centroids equal those of fitting on every bottleneck."""
    from tokenlm.run.rundir import RunDir
    from tokenlm.tokenizer.codebook import CodebookConfig, fit_codebook
    from tokenlm.tokenizer.fit import PatchSampler, bottlenecks

    coder = load_patch_coder(RunDir(run).tokenizer)
    config, k = CodebookConfig(niter=5, points_per_centroid=points_per_centroid, gpu="never"), 4
    full = PatchSampler(run / "features", "train", coder.features, coder)  # every patch, as before
    everything = bottlenecks(coder, full)
    sampled = PatchSampler(run / "features", "train", coder.features, coder, k * points_per_centroid, config.seed)
    vectors = bottlenecks(coder, sampled)
    budget = k * points_per_centroid
    expected = (np.arange(len(everything)) if len(everything) <= budget
                else np.sort(np.random.default_rng(config.seed).choice(len(everything), budget, replace=False)))
    assert sampled.population == len(everything) and (budget < len(everything)) == (points_per_centroid == 20)
    np.testing.assert_array_equal(sampled.numbers, expected)
    np.testing.assert_allclose(vectors, everything[expected], rtol=0, atol=1e-6)  # exactly the sampled patches'
    today, record_today = fit_codebook(everything, k, config)
    ours, record = fit_codebook(vectors, k, config, population=sampled.population)
    np.testing.assert_allclose(ours, today, rtol=0, atol=1e-5)
    assert record["vectors"] == record_today["vectors"] and record["trained_on"] == record_today["trained_on"]
