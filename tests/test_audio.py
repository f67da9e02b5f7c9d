"""load_audio: every file either loads as mono float32 at the target rate with the right
length and content, or raises AudioError naming the file and the reason."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tokenlm.core.errors import AudioError, TokenlmError
from tokenlm.data.audio import audio_blocks, load_audio, prepare_waveform

SR = 16000


def peak_frequency(wav: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sample_rate)[spectrum.argmax()])


def band_energy(wav: np.ndarray, sample_rate: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav)))) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1 / sample_rate)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].sum())


# ---- broken files -------------------------------------------------------------------------

def _random_bytes(tmp_path, write_audio):
    path = tmp_path / "random.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _truncated_header(tmp_path, write_audio):
    good = write_audio("good.wav", seconds=0.5)
    path = tmp_path / "truncated_header.wav"
    path.write_bytes(good.read_bytes()[:20])  # RIFF header cut inside the fmt chunk
    return path


def _empty_file(tmp_path, write_audio):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path


def _text_as_flac(tmp_path, write_audio):
    path = tmp_path / "notes.flac"
    path.write_text("not audio at all\n" * 50)
    return path


def _zero_samples(tmp_path, write_audio):
    return write_audio("zero.wav", data=np.zeros((0, 1), np.float32))


def _nan_float(tmp_path, write_audio):
    wav = np.sin(np.arange(8000) / 5).astype(np.float32)
    wav[1000] = np.nan
    return write_audio("nan.wav", data=wav, subtype="FLOAT")


def _inf_double(tmp_path, write_audio):
    wav = np.sin(np.arange(8000) / 5)
    wav[-1] = -np.inf
    return write_audio("inf.wav", data=wav, subtype="DOUBLE")


def _huge_stereo(tmp_path, write_audio):
    wav = np.full((8000, 2), 3e38, np.float32)  # finite, but the two channels' sum is not
    return write_audio("huge.wav", data=wav, subtype="FLOAT")


def _silence(tmp_path, write_audio):
    return write_audio("silence.wav", data=np.zeros(SR, np.float32), subtype="PCM_16")


def _too_short(tmp_path, write_audio):
    return write_audio("short.wav", seconds=0.01)  # 160 samples < min_samples=400


def _missing(tmp_path, write_audio):
    return tmp_path / "does_not_exist.wav"


BROKEN = {
    "random bytes": (_random_bytes, "cannot decode"),
    "truncated header": (_truncated_header, "cannot decode"),
    "empty file": (_empty_file, "cannot decode"),
    "text named .flac": (_text_as_flac, "cannot decode"),
    "zero samples": (_zero_samples, "no samples"),
    "NaN float": (_nan_float, "NaN or infinite"),
    "inf double": (_inf_double, "NaN or infinite"),
    "huge stereo floats": (_huge_stereo, "overflow"),
    "silence": (_silence, "silent"),
    "too short": (_too_short, "too short"),
    "missing": (_missing, "not found"),
}


def in_blocks(path, sample_rate, min_samples=1):
    """``audio_blocks`` in 0.01 s blocks, joined: the streaming path for any file here."""
    return np.concatenate(list(audio_blocks(path, sample_rate, min_samples, block_seconds=0.01)))


@pytest.mark.parametrize("load", [load_audio, in_blocks], ids=["whole", "blocks"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_file_raises_audio_error_naming_file_and_reason(case, load, tmp_path, write_audio):
    make, reason = BROKEN[case]
    path = make(tmp_path, write_audio)
    with pytest.raises(AudioError) as info:
        load(path, SR, min_samples=400)
    err = info.value
    assert isinstance(err, TokenlmError)  # the CLI prints it as one line
    assert err.path == str(path)
    assert reason in err.reason
    assert str(err).startswith(str(path)) and reason in str(err)
    assert "\n" not in str(err)
    # libsndfile's own "Error opening 'path': " prefix is not repeated in the reason
    assert str(path) not in err.reason


def test_truncated_data_chunk_loads_what_is_there_or_fails_cleanly(tmp_path, write_audio):
    wav = np.round(np.random.default_rng(1).uniform(-0.5, 0.5, SR) * 32767) / 32768
    good = write_audio("good.wav", data=wav.astype(np.float32), subtype="PCM_16")
    cut = tmp_path / "truncated_data.wav"
    cut.write_bytes(good.read_bytes()[: 44 + 2 * 5000])  # header promises 16000 samples, 5000 present
    try:
        out = load_audio(cut, SR)
    except AudioError as err:
        assert err.path == str(cut)
    else:
        assert 0 < len(out) <= 5000
        np.testing.assert_allclose(out, wav[: len(out)], atol=1e-6)


# ---- files that load ----------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 96000])
def test_any_rate_is_resampled_to_16k_keeping_length_pitch_and_level(rate, write_audio):
    path = write_audio(f"tone_{rate}.wav", seconds=1.0, sample_rate=rate, freq=1000.0, amplitude=0.5,
                       subtype="PCM_24" if rate == 96000 else "PCM_16")
    out = load_audio(path, SR)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - SR) <= 1  # one second stays one second
    assert abs(peak_frequency(out, SR) - 1000.0) <= 1.0
    middle = out[2000:-2000]  # away from the resampler's edges
    np.testing.assert_allclose(np.abs(middle).max(), 0.5, rtol=0.02)
    np.testing.assert_allclose(np.sqrt(np.mean(middle**2)), 0.5 / np.sqrt(2), rtol=0.02)


@pytest.mark.parametrize("rate,channels", [(16000, 1), (44100, 2), (48000, 6), (8000, 1)])
def test_blocks_join_into_the_whole_file(rate, channels, write_audio, make_tone):
    """soxr's streaming resampler continues across blocks: the joined blocks are the one-shot
    result, and one block covering the file is the one-shot path itself."""
    wav = make_tone(700.0, 1.3, rate, 0.4, channels=channels, noise=0.05)
    path = write_audio(f"tone_{rate}.wav", data=wav, sample_rate=rate, subtype="FLOAT")
    whole = load_audio(path, SR)
    blocks = list(audio_blocks(path, SR, block_seconds=0.1))
    assert len(blocks) > 5 and all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_allclose(np.concatenate(blocks), whole, atol=1e-6, rtol=0)
    [single] = audio_blocks(path, SR, block_seconds=2.0)
    np.testing.assert_array_equal(single, whole)


def test_downsampling_filters_out_what_would_alias(write_audio, make_tone):
    # 1 kHz + 12 kHz at 96 kHz: the 12 kHz tone is above the new Nyquist (8 kHz) and must be
    # removed, not folded down to 16 - 12 = 4 kHz.
    wav = make_tone(1000.0, 1.0, 96000, 0.4) + make_tone(12000.0, 1.0, 96000, 0.4)
    out = load_audio(write_audio("mix96k.wav", data=wav, sample_rate=96000, subtype="FLOAT"), SR)
    wanted = band_energy(out, SR, 900, 1100)
    assert band_energy(out, SR, 3800, 4200) < 1e-6 * wanted
    assert band_energy(out, SR, 1200, 8000) < 1e-5 * wanted


def test_six_channels_are_averaged(write_audio, make_tone):
    wav = make_tone(440.0, 0.5, SR, 0.6, channels=6)  # (T, 6), channel c at 0.6 / (c + 1)
    wav[:, 5] = -wav[:, 5]  # a channel in antiphase must subtract, not add
    out = load_audio(write_audio("six.wav", data=wav, subtype="FLOAT"), SR)
    np.testing.assert_allclose(out, wav.mean(axis=1), atol=1e-7)


def test_stereo_mix_is_the_channel_mean(write_audio, make_tone):
    wav = make_tone(300.0, 0.3, 44100, 0.5, channels=2)
    out = prepare_waveform(wav, 44100, 44100)
    np.testing.assert_array_equal(out, wav.mean(axis=1))


def test_24_bit_pcm_is_read_at_full_precision(write_audio):
    ints = np.random.default_rng(2).integers(-(2**23), 2**23, SR)
    ints[0] = 2**23 - 1  # full scale
    path = write_audio("pcm24.wav", data=(ints / 2**23).astype(np.float64), subtype="PCM_24")
    assert sf.info(str(path)).subtype == "PCM_24"
    out = load_audio(path, SR)
    np.testing.assert_allclose(out, ints / 2**23, atol=2**-23)
    assert out[0] > 0.99999


def test_16_bit_pcm_content_is_exact(write_audio):
    ints = np.random.default_rng(3).integers(-(2**15), 2**15, 8000)
    out = load_audio(write_audio("pcm16.wav", data=(ints / 2**15), subtype="PCM_16"), SR)
    np.testing.assert_array_equal(out, (ints / 2**15).astype(np.float32))


@pytest.mark.parametrize("fmt,subtype,ext", [("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"),
                                              ("MP3", "MPEG_LAYER_III", "mp3")])
def test_compressed_formats_load(fmt, subtype, ext, write_audio):
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    path = write_audio(f"tone.{ext}", seconds=1.0, sample_rate=44100, freq=1000.0, format=fmt, subtype=subtype)
    out = load_audio(path, SR)
    # lossy codecs may add encoder delay/padding: allow a few ms, check pitch and level
    assert abs(len(out) - SR) <= 0.06 * SR
    assert abs(peak_frequency(out, SR) - 1000.0) <= 2.0
    np.testing.assert_allclose(np.abs(out[4000:-4000]).max(), 0.5, rtol=0.05)
    if fmt == "FLAC":  # lossless: no codec delay
        assert abs(len(out) - SR) <= 1


def test_prepare_waveform_accepts_1d_and_does_not_alias_the_input(make_tone):
    wav = make_tone(440.0, 0.1, SR)
    out = prepare_waveform(wav, SR, SR)
    np.testing.assert_array_equal(out, wav)
    out[:] = 0
    assert np.abs(wav).max() > 0.4


def test_quiet_but_not_silent_audio_loads(write_audio):
    # -80 dBFS is quiet, not digital silence
    out = load_audio(write_audio("quiet.wav", seconds=0.5, amplitude=1e-4, subtype="FLOAT"), SR)
    assert np.abs(out).max() == pytest.approx(1e-4, rel=1e-3)
