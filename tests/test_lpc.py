"""Linear prediction read off a log-mel: analysis and synthesis invert each other, and white
excitation through the synthesis takes on the log-mel's envelope."""

import numpy as np
import pytest
import torch

from tests.conftest import sound
from tokenlm.data.features import FeatureConfig, LogMel
from tokenlm.evaluation.spectral import logmel_distance_db
from tokenlm.vocoder import lpc

SR, HOP = 8000, 80
FEATURES = FeatureConfig(sample_rate=SR, n_fft=200, hop_length=HOP, n_mels=16, patch_frames=2)


def frames_of(audio: np.ndarray, order: int = 8) -> np.ndarray:
    n_frames = len(audio) // HOP
    log_mel = LogMel(FEATURES)(torch.from_numpy(audio))[:n_frames].numpy()
    return lpc.frame_lpc(log_mel, FEATURES, order)


def test_analysis_and_synthesis_invert_each_other():
    audio = 0.05 * sound("chirp", 0.2, SR, 0)[: 16 * HOP]
    frames = frames_of(audio)
    assert frames.shape == (16, 9) and np.isfinite(frames).all() and (frames[:, -1] > 0).all()
    excitation = lpc.analyse(audio, frames, HOP)
    assert excitation.shape == audio.shape and np.abs(excitation).max() < 1  # not clipped
    assert np.allclose(lpc.synthesise(excitation, frames, HOP), audio, atol=1e-4)


def test_white_excitation_takes_the_envelope_of_the_log_mel():
    audio = 0.1 * sound("tone", 0.4, SR, 1)[: 40 * HOP]
    frames = frames_of(audio, order=12)
    white = np.random.default_rng(0).normal(0, 1 / lpc.HEADROOM, len(audio)).astype(np.float32)
    shaped = lpc.synthesise(white, frames, HOP)
    flat = white * (np.sqrt(np.mean(audio**2)) / np.sqrt(np.mean(white**2)))  # same loudness, no envelope
    log_mel = LogMel(FEATURES)
    ref = log_mel(torch.from_numpy(audio))[:40]
    shaped_db = logmel_distance_db(ref, log_mel(torch.from_numpy(shaped))[:40])
    assert shaped_db < logmel_distance_db(ref, log_mel(torch.from_numpy(flat))[:40]) - 3


def test_a_vocoder_with_lpc_round_trips_and_keeps_exact_lengths():
    from tokenlm.models.wavenet import WaveNet, WaveNetConfig
    from tokenlm.vocoder.vocoder import Vocoder, audio_from_network, network_signal

    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(layers_per_cycle=2, cycles=1, residual_channels=4, gate_channels=4, skip_channels=4,
                                  cond_channels=4, codebook_size=3, samples_per_code=2 * HOP, sample_rate=SR,
                                  frames_per_code=2, lpc_order=8, pre_emphasis=0.5))
    audio = 0.05 * sound("chirp", 0.2, SR, 0)[: 8 * HOP]
    model.code_lpc.copy_(torch.from_numpy(frames_of(audio)[:6].reshape(3, 2, 9)))
    codes = np.array([0, 1, 2, 1])
    signal = network_signal(model, audio, codes)
    assert signal.shape == audio.shape and np.allclose(audio_from_network(model, signal, codes), audio, atol=1e-4)
    vocoder = Vocoder(model, {"sample_rate": SR, "samples_per_code": 2 * HOP, "codebook_size": 3,
                              "tokenizer_hash": None})
    out = vocoder.resynthesise(codes, prompt=audio[:100])
    assert out.shape == (4 * 2 * HOP,) and np.isfinite(out).all()
    assert [len(a) for a in vocoder.resynthesise_batch([codes, codes[:1]])] == [8 * HOP, 2 * HOP]


def test_the_signal_gain_gives_every_frame_the_same_level():
    audio = 0.05 * sound("chirp", 0.2, SR, 0)[: 16 * HOP]
    audio[: 4 * HOP] *= 0.01  # a quiet start: the codes' gain would keep it quiet, the signal's does not
    frames = frames_of(audio)
    excitation = lpc.analyse(audio[: 15 * HOP + 7], frames, HOP, gain="signal")  # a partial last frame
    assert excitation.shape == (15 * HOP + 7,)
    rms = [np.sqrt(np.mean(np.square(excitation[i * HOP:(i + 1) * HOP]))) for i in range(16)]
    assert np.allclose(rms, 1 / lpc.HEADROOM, rtol=1e-3)
    with pytest.raises(ValueError, match="gain must be"):
        lpc.analyse(audio, frames, HOP, gain="loud")


def test_the_signal_gain_turns_digital_silence_into_unit_noise():
    silence = np.zeros(4 * HOP, np.float32)
    frames = np.tile(np.concatenate([np.zeros(8), [1e-3]]).astype(np.float32), (4, 1))
    excitation = lpc.analyse(silence, frames, HOP, gain="signal")
    assert np.allclose(np.sqrt(np.mean(excitation**2)), 1 / lpc.HEADROOM, rtol=1e-3)
    assert np.array_equal(excitation, lpc.analyse(silence, frames, HOP, gain="signal"))  # seeded
    assert not lpc.analyse(silence, frames, HOP).any()  # the codes' gain keeps silence silent
    assert not lpc.analyse(silence, frames, HOP, gain="capped").any()  # and so does the capped one


def test_the_capped_gain_never_exceeds_unit_level():
    audio = 0.05 * sound("chirp", 0.2, SR, 0)[: 16 * HOP]
    frames = frames_of(audio)
    frames[:8, -1] *= 0.1  # codes that decode 20 dB too quiet: their excitation is capped, not 10x
    capped = lpc.analyse(audio, frames, HOP, gain="capped")
    rms = np.array([np.sqrt(np.mean(np.square(capped[i * HOP:(i + 1) * HOP]))) for i in range(16)])
    assert (rms <= 1 / lpc.HEADROOM * (1 + 1e-3)).all() and np.allclose(rms[:8], 1 / lpc.HEADROOM, rtol=1e-3)
