"""AudioTokenizer: the codec contract (encode/decode shapes, frame rate, properties), loading
from a run, any sample rate / channel count, and batch == one clip at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from tests.conftest import sound
from tokenlm.core.errors import ArtifactError, AudioError
from tokenlm.core.fileio import write_json
from tokenlm.models.autoencoder import AutoencoderConfig
from tokenlm.pipeline.prepare import prepare
from tokenlm.pipeline.tokenize import tokenize
from tokenlm.tokenizer.codebook import CodebookConfig
from tokenlm.tokenizer.tokenizer import AudioTokenizer, AutoencoderTraining, TokenizerConfig

SR = 16000


# one torch thread (conftest): clip-sized ops gain nothing from more, and on a busy
# machine the spin-waits of idle OpenMP threads slow them down by orders of magnitude
pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run with a small trained tokenizer and two codebooks (K=8, then K=16: current)."""
    root = tmp_path_factory.mktemp("tokenizer")
    data = root / "data"
    for label in ("tone", "noise", "chirp"):
        (data / label).mkdir(parents=True)
        for i in range(6):
            sf.write(data / label / f"{label}_{i}.wav", sound(label, 1.0 + 0.1 * i, seed=i), SR, subtype="PCM_16")
    run = root / "run"
    prepare(data, run, progress=False)
    config = TokenizerConfig(codebook_size=8, autoencoder=AutoencoderConfig(hidden=(128, 64), bottleneck=16),
                             training=AutoencoderTraining(epochs=20, batch_size=32, patience=20))
    tokenize(run, config, CodebookConfig(niter=10), device="cpu", progress=False)
    tokenize(run, TokenizerConfig(16, config.autoencoder, config.training), CodebookConfig(niter=10), device="cpu",
             progress=False)
    return run


@pytest.fixture(scope="module")
def tok(run) -> AudioTokenizer:
    return AudioTokenizer.load(run / "tokenizer")


def test_properties(tok):
    assert tok.sample_rate == 16000
    assert tok.patch_frames == 5
    assert tok.code_rate == 16000 / 160 / 5 == 20.0  # sample_rate / hop / patch_frames
    assert tok.samples_per_code == 800
    assert tok.codebook_size == 16  # current.json: the last K asked for
    assert tok.device == torch.device("cpu")


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.37, 3.0])
def test_encode_gives_code_rate_codes_per_second(tok, seconds):
    codes = tok.encode(sound("chirp", seconds), SR)
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.long and codes.dim() == 1
    assert len(codes) == int(seconds * tok.code_rate)
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.codebook_size


def test_clip_shorter_than_a_patch_gives_one_code(tok):
    assert len(tok.encode(sound("tone", 0.02), SR)) == 1  # 3 frames, padded to a 5-frame patch


def test_decode_shape_and_closeness_to_the_input_log_mel(tok, run):
    wav, sr = sf.read(run.parent / "data" / "tone" / "tone_2.wav", dtype="float32")
    codes = tok.encode(wav, sr)
    log_mel = tok.decode(codes)
    assert log_mel.shape == (len(codes) * tok.patch_frames, 64)
    assert log_mel.dtype == torch.float32 and torch.isfinite(log_mel).all()
    target = tok.coder.log_mel(torch.from_numpy(wav))[: len(log_mel)]  # (frames, M) dB
    rmse = (log_mel - target).square().mean().sqrt()
    baseline = (tok.coder.mean - target).square().mean().sqrt()  # predict each bin's mean level
    assert rmse < 0.5 * baseline, (float(rmse), float(baseline))
    # decode takes lists and numpy arrays as well as tensors
    torch.testing.assert_close(tok.decode(codes.tolist()), log_mel)
    torch.testing.assert_close(tok.decode(codes.numpy().astype(np.uint16)), log_mel)


def test_decode_rejects_codes_out_of_range(tok):
    with pytest.raises(ValueError, match=r"codes must be in \[0, 16\)"):
        tok.decode([0, 16])
    with pytest.raises(ValueError):
        tok.decode([-1])
    assert tok.decode([]).shape == (0, 64)


def test_load_from_tokenizer_dir_and_from_codebook_dir(run, tok):
    wav = sound("noise", 1.3, seed=7)
    by_size = AudioTokenizer.load(run / "tokenizer", codebook_size=8)
    by_dir = AudioTokenizer.load(run / "tokenizer" / "k8")
    assert by_size.codebook_size == by_dir.codebook_size == 8
    np.testing.assert_array_equal(by_size.centroids, by_dir.centroids)
    assert torch.equal(by_size.encode(wav, SR), by_dir.encode(wav, SR))
    k16 = AudioTokenizer.load(run / "tokenizer" / "k16")
    assert k16.codebook_size == 16
    assert torch.equal(k16.encode(wav, SR), tok.encode(wav, SR))
    assert by_dir.info["codebook_dir"] == str(run / "tokenizer" / "k8")
    assert by_dir.info["tokenizer_hash"] and by_dir.info["tokenizer_hash"] != k16.info["tokenizer_hash"]


def test_load_errors_name_the_problem(run, tmp_path):
    with pytest.raises(ArtifactError, match=r"no codebook .*k32.*has: k16, k8"):
        AudioTokenizer.load(run / "tokenizer", codebook_size=32)
    with pytest.raises(ArtifactError, match="no trained tokenizer"):
        AudioTokenizer.load(tmp_path)
    copy = tmp_path / "tokenizer"
    shutil.copytree(run / "tokenizer", copy)
    (copy / "current.json").unlink()
    with pytest.raises(ArtifactError, match="cannot tell which codebook"):
        AudioTokenizer.load(copy)
    assert AudioTokenizer.load(copy, codebook_size=8).codebook_size == 8
    np.save(copy / "k8" / "codebook.npy", np.zeros((8, 5), np.float32))
    with pytest.raises(ArtifactError, match="does not fit a 16-d bottleneck"):
        AudioTokenizer.load(copy, codebook_size=8)
    write_json(copy / "current.json", {"codebook_size": 16})
    assert AudioTokenizer.load(copy).codebook_size == 16


def test_any_sample_rate_and_channel_count(tok):
    mono = sound("tone", 2.0, seed=1)
    codes = tok.encode(mono, SR)
    stereo = np.stack([mono, mono], axis=1)  # (T, 2), identical channels: the same mix
    assert torch.equal(tok.encode(stereo, SR), codes)
    assert torch.equal(tok.encode(torch.from_numpy(mono), SR), codes)  # tensors are fine too
    at_44k = soxr.resample(mono, SR, 44100).astype(np.float32)
    other = tok.encode(np.stack([at_44k, 0.5 * at_44k], axis=1), 44100)  # stereo, 44.1 kHz
    assert len(other) == len(codes)
    # The same sound, resampled twice and level-shifted by 1.6 dB: mostly the same codes.
    assert (other == codes).float().mean() >= 0.8


def test_channels_first_and_last_numpy_and_torch_give_the_mono_result(tok):
    left, right = sound("tone", 1.0, seed=1), sound("chirp", 1.0, seed=2)
    mono = (left + right) / 2
    expected = tok.encode(mono, SR)
    stereo_ct = np.stack([left, right])  # (2, T): torchaudio.load's layout
    for wav in (mono[None], stereo_ct, stereo_ct.T, torch.from_numpy(mono)[None], torch.from_numpy(stereo_ct),
                torch.from_numpy(np.ascontiguousarray(stereo_ct.T))):
        assert torch.equal(tok.encode(wav, SR), expected), wav.shape
    assert [torch.equal(c, expected) for c in tok.encode_batch([stereo_ct, stereo_ct.T], SR)] == [True, True]
    # (1, T) used to give 1 code (T channels of one sample each): it must give T's codes
    assert len(tok.encode(mono[None], SR)) == 20


def test_ambiguous_shape_is_refused_and_layout_resolves_it(tok):
    from tokenlm.core.errors import ConfigError

    short = np.stack([sound("tone", 1.0, seed=1)[:12], sound("chirp", 1.0, seed=2)[:12]])  # (2, 12): both small
    with pytest.raises(ConfigError, match="ambiguous.*layout='channels_first'"):
        tok.encode(short, SR)
    with pytest.raises(ConfigError, match="ambiguous"):
        tok.encode(np.ones((400, 300), np.float32), SR)  # both large
    stated = tok.encode(short, SR, layout="channels_first")
    assert torch.equal(stated, tok.encode(short.mean(0), SR))
    assert torch.equal(tok.encode(short.T, SR, layout="channels_last"), stated)
    with pytest.raises(ConfigError, match="layout must be one of"):
        tok.encode(short, SR, layout="CT")
    with pytest.raises(ConfigError, match="got shape"):
        tok.encode(np.ones((2, 2, 100), np.float32), SR)


def test_as_mono_the_vocoder_prompt_reader_takes_the_same_layouts():
    from tokenlm.data.audio_layout import as_mono

    left, right = sound("tone", 0.5, seed=1), sound("chirp", 0.5, seed=2)
    expected = np.float32(0.5) * (left + right)
    for wav in (np.stack([left, right]), np.stack([left, right], 1), torch.from_numpy(np.stack([left, right]))):
        np.testing.assert_allclose(as_mono(wav), expected, rtol=1e-6)


def test_silence_raises_an_audio_error(tok):
    with pytest.raises(AudioError, match="silent"):
        tok.encode(np.zeros(SR, np.float32), SR)


def test_encode_batch_equals_encode_per_clip(tok):
    clips = [sound("tone", 1.0, seed=3), sound("noise", 0.33, seed=4), sound("chirp", 2.5, seed=5),
             sound("tone", 0.02, seed=6), sound("noise", 1.7, seed=8)]
    batch = tok.encode_batch(clips, SR)
    assert [len(c) for c in batch] == [20, 6, 50, 1, 34]
    for clip, codes in zip(clips, batch):
        assert torch.equal(codes, tok.encode(clip, SR))
    at_22k = [soxr.resample(c, SR, 22050).astype(np.float32) for c in clips[:3]]
    for clip, codes in zip(at_22k, tok.encode_batch(at_22k, 22050)):
        assert torch.equal(codes, tok.encode(clip, 22050))


def test_embed_frames_is_the_pre_quantisation_vector(tok):
    wav = sound("chirp", 1.0, seed=2)
    frames = tok.coder.log_mel(torch.from_numpy(wav))
    z = tok.embed_frames(frames)
    assert z.shape == (20, 16)
    nearest = torch.cdist(z.double(), torch.from_numpy(tok.centroids).double()).argmin(1)
    assert torch.equal(nearest, tok.encode(wav, SR))
