"""Speech clips: ten keywords spoken by the eSpeak NG library bundled in espeakng-loader.

Label = keyword, group = voice (accent + voice variant). Each word is trimmed, resampled
to 16 kHz and placed at a random offset and level inside a 1 s clip.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlm.demo.common import MAX_ATTEMPTS, SAMPLE_RATE, SILENT_PEAK, Clip, DemoError, to_pcm16

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


@dataclass(frozen=True)
class Voice:
    """One eSpeak NG voice: an English accent plus a voice variant (``!v`` file)."""

    group: str  # file-name-safe id, used as the split group
    name: str  # what espeak_SetVoiceByName receives


VOICES: tuple[Voice, ...] = (
    Voice("us-m1", "en-us+m1"),
    Voice("us-f2", "en-us+f2"),
    Voice("us-m3", "en-us+m3"),
    Voice("us-f4", "en-us+f4"),
    Voice("gb-m2", "en+m2"),
    Voice("gb-f1", "en+f1"),
    Voice("scot-m4", "en-gb-scotland+m4"),
    Voice("rp-f3", "en-gb-x-rp+f3"),
    Voice("carib-m5", "en-029+m5"),
    Voice("nyc-f5", "en-us-nyc+f5"),
    Voice("us-klatt", "en-us+klatt2"),
    Voice("gb-klatt", "en+klatt4"),
)

SPEECH_CLIP_SECONDS = 1.0
SPEECH_CLIPS_PER_GROUP = 6  # 10 keywords x 12 voices x 6 = 720 clips

# eSpeak NG keeps synthesis state (pitch/flutter phase) between utterances inside one
# process, even after espeak_ng_SetRandSeed, so an utterance depends on what was spoken
# before it. Each voice is therefore rendered by a fresh helper process that speaks its
# fixed list of requests in order: the result depends only on that list. The helper needs
# nothing but the standard library, so it starts in a few tens of milliseconds.
_ESPEAK_WORKER = r"""
import ctypes, json, struct, sys
lib_path, data_path = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(lib_path)
lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                             ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
SYNCHRONOUS, RATE, PITCH, RANGE, POS_CHARACTER, CHARS_UTF8 = 2, 1, 3, 4, 1, 1
rate = lib.espeak_Initialize(SYNCHRONOUS, 0, data_path.encode(), 0)
if rate <= 0:
    sys.exit("espeak_Initialize failed")
pcm = []
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
@CALLBACK
def on_audio(wav, n, events):
    if wav and n > 0:
        pcm.append(ctypes.string_at(wav, 2 * n))
    return 0
lib.espeak_SetSynthCallback(on_audio)
out = sys.stdout.buffer
out.write(struct.pack("<i", rate))
for req in json.loads(sys.stdin.read()):
    if lib.espeak_SetVoiceByName(req["voice"].encode()) != 0:
        sys.exit("unknown eSpeak voice: " + req["voice"])
    lib.espeak_SetParameter(RATE, req["rate"], 0)
    lib.espeak_SetParameter(PITCH, req["pitch"], 0)
    lib.espeak_SetParameter(RANGE, req["range"], 0)
    lib.espeak_ng_SetRandSeed(req["seed"])
    pcm.clear()
    text = req["text"].encode()
    if lib.espeak_Synth(text, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None) != 0:
        sys.exit("espeak_Synth failed for " + repr(req["text"]))
    data = b"".join(pcm)
    out.write(struct.pack("<i", len(data)) + data)
out.flush()
"""


def espeak_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError:
        raise DemoError("the demo's speech needs espeakng-loader, which is not installed: pip install 'tokenlm[demo]'") from None
    lib_path = espeakng_loader.get_library_path()
    try:
        data_path = espeakng_loader.get_data_path()
    except RuntimeError:
        raise DemoError("espeakng-loader has no espeak-ng-data folder") from None
    if not Path(lib_path).is_file():
        raise DemoError(f"eSpeak NG library not found: {lib_path}")
    return lib_path, data_path


def espeak_render(requests: list[dict]) -> list[tuple[np.ndarray, int]]:
    """Speak ``requests`` in order in a fresh helper process; returns (int16 pcm, rate) each."""
    lib_path, data_path = espeak_paths()
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _ESPEAK_WORKER, lib_path, data_path],
        input=json.dumps(requests).encode(), capture_output=True, check=False,
    )
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DemoError(f"eSpeak NG failed: {reason[-1] if reason else f'exit {proc.returncode}'}")
    buf = proc.stdout
    (rate,), pos = struct.unpack_from("<i", buf, 0), 4
    out = []
    for _ in requests:
        (size,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        out.append((np.frombuffer(buf, dtype="<i2", count=size // 2, offset=pos).copy(), rate))
        pos += size
    return out


def _speech_request(keyword: str, voice: Voice, index: int, seed: int, attempt: int) -> dict:
    rng = np.random.default_rng([seed, 1, KEYWORDS.index(keyword), VOICES.index(voice), index, attempt])
    return {
        "text": keyword,
        "voice": voice.name,
        "rate": int(rng.integers(130, 211)),  # words per minute
        "pitch": int(rng.integers(25, 76)),  # 0-100, 50 = the voice's own
        "range": int(rng.integers(20, 81)),  # intonation range, 0-100
        "seed": int(rng.integers(0, 2**31 - 1)),
        # placement and level of the word inside the clip
        "offset": float(rng.uniform(0.0, 1.0)),
        "peak": float(rng.uniform(0.3, 0.8)),
    }


def _speech_clip(pcm: np.ndarray, rate: int, req: dict) -> np.ndarray | None:
    """Trim the utterance, resample to 16 kHz and place it in a 1 s clip; None if unusable."""
    import soxr

    audio = pcm.astype(np.float64) / 32768.0
    loud = np.nonzero(np.abs(audio) > 0.01 * max(np.abs(audio).max(), 1e-9))[0]
    if len(loud) == 0 or np.abs(audio).max() < SILENT_PEAK:
        return None
    audio = audio[max(loud[0] - int(0.01 * rate), 0): loud[-1] + int(0.02 * rate)]
    audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    n = int(round(SPEECH_CLIP_SECONDS * SAMPLE_RATE))
    margin = int(0.02 * SAMPLE_RATE)
    if len(audio) > n - 2 * margin:
        return None  # too slow to fit: re-draw
    start = margin + int(req["offset"] * (n - 2 * margin - len(audio)))
    # Short raised-cosine ramps: the trim points cut through low-level sound, not silence.
    ramp = int(0.005 * SAMPLE_RATE)
    window = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
    audio[:ramp] *= window
    audio[-ramp:] *= window[::-1]
    clip = np.zeros(n)
    clip[start: start + len(audio)] = audio * (req["peak"] / np.abs(audio).max())
    return clip


def speech_clips(seed: int, per_group: int) -> Iterator[Clip]:
    """Every clip of a build, voice by voice; a voice's clips come once all are spoken."""
    for voice in VOICES:
        cells = [(kw, i) for i in range(per_group) for kw in KEYWORDS]
        done: dict[tuple[str, int], np.ndarray] = {}
        for attempt in range(MAX_ATTEMPTS):
            todo = [cell for cell in cells if cell not in done]
            if not todo:
                break
            reqs = [_speech_request(kw, voice, i, seed, attempt) for kw, i in todo]
            for cell, req, (pcm, rate) in zip(todo, reqs, espeak_render(reqs)):
                clip = _speech_clip(pcm, rate, req)
                pcm16 = None if clip is None else to_pcm16(clip)
                if pcm16 is not None:
                    done[cell] = pcm16
        for kw, i in cells:
            yield Clip(kw, voice.group, i, done.get((kw, i)))
