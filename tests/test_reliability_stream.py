"""Issue 11, items 5 (audio half) and 7: a float file of huge finite samples is refused with its
reason instead of ruining the run's statistics, and memory does not grow with a file's length
(decoding in blocks, read-ahead and encoding passes bounded by seconds of audio)."""

from __future__ import annotations

import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import sound
from tokenlm.core.errors import AudioError
from tokenlm.core.fileio import read_jsonl
from tokenlm.core.runtime import bounded_map
from tokenlm.data.audio import audio_blocks, load_audio
from tokenlm.data.features import FeatureConfig, LogMel, RunningStats, file_log_mel
from tokenlm.data.store import RaggedSplit, RaggedWriter
from tokenlm.evaluation.representations import chunks_by_length
from tokenlm.models.autoencoder import AutoencoderConfig, PatchAutoencoder
from tokenlm.pipeline import prepare as prepare_stage
from tokenlm.pipeline.prepare import prepare
from tokenlm.run.rundir import read_feature_meta
from tokenlm.tokenizer.encoding import encode_clips
from tokenlm.tokenizer.tokenizer import AudioTokenizer, PatchCoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000
HUGE = 3e38  # finite in float32 (max 3.4e38), but its square, or the sum of two, is not


def huge_samples(seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    wav = np.full((int(seconds * SR), channels), HUGE, dtype=np.float32)
    wav[::2] = -HUGE
    return wav


# ---- item 5: huge finite samples --------------------------------------------------------


def peak(fn) -> int:
    """The most memory (bytes, Python allocations traced) that calling ``fn`` held at once."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

def test_huge_mono_floats_are_refused_for_their_log_mel(write_audio):
    path = write_audio("huge.wav", data=huge_samples(), subtype="FLOAT")
    with pytest.raises(AudioError, match="log-mel is not finite") as info:
        file_log_mel(path, LogMel(FeatureConfig()), min_samples=400)
    assert info.value.path == str(path) and "\n" not in str(info.value)


@pytest.mark.parametrize("channels,rate", [(2, SR), (1, 44100)])
def test_huge_floats_overflowing_the_mix_or_resampler_are_refused(channels, rate, write_audio):
    path = write_audio("huge.wav", data=huge_samples(channels=channels), sample_rate=rate, subtype="FLOAT")
    for load in (lambda: load_audio(path, SR), lambda: list(audio_blocks(path, SR, block_seconds=0.1))):
        with pytest.raises(AudioError, match="overflow"):
            load()


def test_a_huge_float_clip_is_skipped_and_the_run_stays_usable(make_corpus, tmp_path):
    """Before: the clip passed, the normalisation statistics became NaN, and tokenize's
    autoencoder never had a finite loss."""
    corpus = make_corpus(labels=2, groups=2, clips=2)
    sf.write(corpus / "class0" / "huge.wav", huge_samples(channels=2), SR, subtype="FLOAT")
    run = tmp_path / "run"
    prepare(corpus, run, progress=False)
    meta = read_feature_meta(run / "features")
    assert np.isfinite(meta.norm_mean).all() and np.isfinite(meta.norm_std).all()
    huge = next(row for row in read_jsonl(run / "manifest.jsonl") if row["path"].endswith("huge.wav"))
    assert huge["status"] == "skipped" and "overflow" in huge["reason"]
    for split in ("train", "val", "test"):  # what the autoencoder is trained on
        assert all(np.isfinite(frames).all() for _, frames in RaggedSplit(run / "features", split, "float16", width=64))


# ---- item 7: memory does not grow with the file -----------------------------------------

def test_decoding_in_blocks_holds_one_block_not_the_file(write_audio):
    """numpy reports its buffers to tracemalloc: the peak while streaming 20 s of 48 kHz stereo
    is a few 1 s blocks, while decoding it whole holds all of it (7.7 MB as float32)."""
    rng = np.random.default_rng(0)
    path = write_audio("long.wav", data=0.1 * rng.standard_normal((20 * 48000, 2)).astype(np.float32),
                       sample_rate=48000, subtype="PCM_16")
    whole_bytes = 20 * 48000 * 2 * 4

    streamed = peak(lambda: sum(len(b) for b in audio_blocks(path, SR, block_seconds=1.0)))
    whole = peak(lambda: load_audio(path, SR))
    assert whole > whole_bytes
    assert streamed < whole_bytes / 5


class RecordingPool(ThreadPoolExecutor):
    """A thread pool that keeps the weight of what was submitted and not yet consumed."""

    def __init__(self, weights):
        super().__init__(max_workers=4)
        self.weights, self.in_flight, self.heaviest = weights, [], 0

    def submit(self, fn, item):
        self.in_flight.append(item)
        if len(self.in_flight) > 1:  # a single call may weigh anything
            self.heaviest = max(self.heaviest, sum(self.weights[i] for i in self.in_flight))
        return super().submit(fn, item)


def test_read_ahead_is_bounded_by_weight_and_always_runs_one():
    weights = [1, 5, 1, 1, 2, 9, 1, 1, 1, 3]
    with RecordingPool(weights) as pool:
        out = []
        for i in bounded_map(pool, lambda i: i, range(len(weights)), ahead=8, weight=weights.__getitem__, budget=6):
            pool.in_flight.remove(i)
            out.append(i)
    assert out == list(range(len(weights)))
    assert pool.heaviest == 6  # reached, never passed


def test_lm_chunks_are_bounded_by_codes():
    clips = [np.zeros(n) for n in (3, 4, 10, 1, 1, 2, 30, 2)]
    chunks = list(chunks_by_length(clips, 8))
    assert [[len(c) for c in chunk] for chunk in chunks] == [[3, 4], [10], [1, 1, 2], [30], [2]]
    assert sum(len(chunk) for chunk in chunks) == len(clips)


def tiny_tokenizer(features: FeatureConfig) -> AudioTokenizer:
    torch.manual_seed(0)
    autoencoder = PatchAutoencoder(features.patch_dim, AutoencoderConfig(hidden=(16, 8), bottleneck=4))
    coder = PatchCoder(features, np.full(features.n_mels, -40.0), np.full(features.n_mels, 20.0), autoencoder)
    centroids = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    return AudioTokenizer(coder, centroids)


@pytest.mark.parametrize("patch_hop", [None, 2])
def test_long_clips_encoded_in_small_passes_get_the_codes_of_the_whole_clip(patch_hop, write_audio, tmp_path):
    """encode_clips cuts long clips on patch boundaries to bound a pass's memory: the codes are
    those of ``AudioTokenizer.encode`` on the whole clip (bit for bit: one decoding block)."""
    tokenizer = tiny_tokenizer(FeatureConfig(patch_hop=patch_hop))
    rows = []
    for i, seconds in enumerate([3.0, 0.3, 2.17, 0.05]):
        wav = sound(("chirp", "noise", "tone", "tone")[i], seconds, SR, seed=i)
        rows.append({"id": f"c{i}", "path": str(write_audio(f"c{i}.wav", data=wav, subtype="FLOAT")),
                     "label": None, "split": "train"})
    (tmp_path / "tokens").mkdir()
    meta = encode_clips(tokenizer, rows, tmp_path / "tokens", progress=False, batch_seconds=0.4)
    assert meta["skipped"] == [] and meta["clips"]["train"] == 4
    stored = {row["id"]: np.array(codes) for row, codes in RaggedSplit(tmp_path / "tokens", "train", "uint16")}
    for row in rows:
        expected = tokenizer.encode(load_audio(row["path"], SR), SR).numpy()
        np.testing.assert_array_equal(stored[row["id"]], expected)


def test_long_files_encode_within_tolerance_of_the_one_shot_path(write_audio):
    """A file longer than a decoding block goes through the streamed log-mel; its codes match
    the one-shot encoding except where a patch sits on a tie (float tolerance)."""
    tokenizer = tiny_tokenizer(FeatureConfig())
    path = write_audio("long.wav", data=sound("chirp", 4.0, SR, seed=3), subtype="FLOAT")
    frames, num_samples = file_log_mel(path, LogMel(FeatureConfig()), block_seconds=0.3)
    one_shot = LogMel(FeatureConfig())(torch.from_numpy(load_audio(path, SR))).numpy()
    assert num_samples == 4 * SR and frames.shape == one_shot.shape
    np.testing.assert_allclose(frames, one_shot, atol=1e-3, rtol=0)
    codes = tokenizer.encode_frames(torch.from_numpy(frames)).numpy()
    expected = tokenizer.encode_frames(torch.from_numpy(one_shot)).numpy()
    assert len(codes) == 80 and (codes == expected).mean() > 0.95


# ---- round 2: a long clip's frames go to disk block by block ----------------------------

def test_a_writer_appends_a_clip_in_blocks_with_the_bytes_of_one_add(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal((n, 3)).astype(np.float32) for n in (5, 7, 2)]
    (tmp_path / "whole").mkdir(), (tmp_path / "blocks").mkdir()
    with RaggedWriter(tmp_path / "whole", "train", "float16", width=3) as whole:
        for i, clip in enumerate(clips):
            whole.add({"id": f"c{i}"}, clip)
    with RaggedWriter(tmp_path / "blocks", "train", "float16", width=3) as blocks:
        for i, clip in enumerate(clips):
            blocks.begin(f"c{i}")
            for start in range(0, len(clip), 3):
                blocks.extend(clip[start:start + 3])
            blocks.end({"id": f"c{i}"})
            blocks.begin("dropped")  # a clip that fails half-way leaves nothing behind
            blocks.extend(clip)
            blocks.discard()
    for name in ("train.bin", "train.index.jsonl"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "blocks" / name).read_bytes()


def test_streamed_long_clips_give_the_features_of_whole_clips(make_corpus, tmp_path, monkeypatch):
    """prepare writes a clip longer than STREAM_SECONDS block by block from the writing thread
    (its frames are never held whole): the features, index, statistics and manifest are the
    same bytes, and a clip that fails after some blocks were written leaves no trace."""
    corpus = make_corpus(labels=2, groups=2, clips=2)
    rng = np.random.default_rng(1)
    sf.write(corpus / "class0" / "long.wav", 0.1 * rng.standard_normal(31 * SR).astype(np.float32), SR)
    bad = 0.1 * rng.standard_normal(31 * SR).astype(np.float32)
    bad[20 * SR:] = HUGE  # the third decoding block overflows the log-mel
    sf.write(corpus / "class1" / "late_huge.wav", bad, SR, subtype="FLOAT")
    monkeypatch.setattr(RunningStats, "SLICE", 1000)  # several statistics slices per long clip
    runs = {}
    for name, stream_seconds in (("whole", 1e9), ("streamed", 0.0)):
        monkeypatch.setattr(prepare_stage, "STREAM_SECONDS", stream_seconds)
        runs[name] = tmp_path / name
        prepare(corpus, runs[name], progress=False)
    manifest = read_jsonl(runs["streamed"] / "manifest.jsonl")
    assert next(m for m in manifest if m["path"].endswith("late_huge.wav"))["status"] == "skipped"
    assert next(m for m in manifest if m["path"].endswith("long.wav"))["duration"] == 31.0
    for name in ("train.bin", "train.index.jsonl", "val.bin", "test.index.jsonl", "meta.json", "manifest.jsonl"):
        assert (runs["whole"] / "features" / name).read_bytes() == (runs["streamed"] / "features" / name).read_bytes(), name


@pytest.mark.parametrize("patch_hop", [None, 2, 7])
def test_long_clips_encoded_block_by_block_get_the_codes_of_whole_clips(patch_hop, write_audio, tmp_path):
    """encode_clips encodes a clip longer than a batch as its decoding blocks come (16 s: two
    blocks), without holding its frames: same codes file and index as encoding it whole, and
    a clip that fails in its second block leaves nothing but its entry in ``skipped``."""
    tokenizer = tiny_tokenizer(FeatureConfig(patch_hop=patch_hop))
    bad = sound("tone", 16.0, SR, seed=9).astype(np.float32)
    bad[15 * SR + 100:] = HUGE
    rows = []
    for i, (kind, seconds) in enumerate([("chirp", 16.0), ("tone", 0.05), ("bad", 16.0), ("noise", 2.0)]):
        wav = bad if kind == "bad" else sound(kind, seconds, SR, seed=i)
        rows.append({"id": f"c{i}", "path": str(write_audio(f"c{i}.wav", data=wav, subtype="FLOAT")),
                     "label": None, "split": "train"})
    metas = {}
    for name, batch_seconds in (("whole", 1e6), ("blocks", 1.0)):
        (tmp_path / name).mkdir()
        metas[name] = encode_clips(tokenizer, rows, tmp_path / name, progress=False, batch_seconds=batch_seconds)
    assert [s["id"] for s in metas["blocks"]["skipped"]] == ["c2"] and metas["blocks"] == metas["whole"]
    for name in ("train.bin", "train.index.jsonl"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "blocks" / name).read_bytes()


def test_prepare_and_encoding_hold_a_block_not_a_long_clips_frames(make_corpus, tmp_path):
    """numpy reports its buffers to tracemalloc: featurising and encoding a 6-minute clip peaks
    under its frames' 9.2 MB (float32), at a 15 s decoding block and its frames (~7 MB at
    16 kHz), where both held the whole clip's frames and a block (~16 MB) before."""
    corpus = make_corpus(labels=2, groups=2, clips=1)
    seconds = 360
    sf.write(corpus / "class0" / "long.wav", sound("chirp", seconds, SR, seed=5), SR, subtype="PCM_16")
    frames_bytes = seconds * 100 * 64 * 4

    run = tmp_path / "run"
    assert peak(lambda: prepare(corpus, run, progress=False)) < frames_bytes
    rows = [row for row in read_jsonl(run / "manifest.jsonl") if row["path"].endswith("long.wav")]
    (tmp_path / "tokens").mkdir()
    tokenizer = tiny_tokenizer(FeatureConfig())
    encode = lambda: encode_clips(tokenizer, rows, tmp_path / "tokens", progress=False, batch_seconds=20.0)
    assert peak(encode) < frames_bytes
