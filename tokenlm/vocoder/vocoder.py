"""Vocoder: a trained WaveNet decoder, ready to turn codes back into audio.

    voc = Vocoder.load("runs/demo/vocoder")
    tok = AudioTokenizer.load("runs/demo/tokenizer", codebook_size=voc.codebook_size)
    voc.check_tokenizer(tok)                       # a different tokenizer fails here, clearly
    audio = voc.resynthesise(tok.encode(wav, sr))  # float32 (N * voc.samples_per_code,)

On disk (``RUN/vocoder/``): ``config.json`` (the WaveNetConfig under ``wavenet`` plus the sample
rate, hop, samples per code, codebook size and tokenizer hash of the codes it was trained on)
and ``wavenet.safetensors``. The codes only mean something to the vocoder together with the
tokenizer that made them: ``check_tokenizer`` refuses any other one (``tokenlm.pipeline.loaders``
loads a run's vocoder together with its tokenizer, checked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.fileio import read_json, write_json
from tokenlm.core.runtime import kernel_threads, pick_device
from tokenlm.data.audio_layout import as_mono
from tokenlm.models.wavenet import WaveNet, WaveNetConfig, de_emphasis, mu_law_encode, pre_emphasis
from tokenlm.run.artifacts import check_outputs
from tokenlm.run.rundir import CONFIG, WAVENET_WEIGHTS
from tokenlm.vocoder import lpc

__all__ = ["Vocoder", "save_vocoder", "write_wav", "network_signal", "audio_from_network", "FORMAT"]

FORMAT = "tokenlm-wavenet"
# What a vocoder's config.json must say about the codes it was trained on.
REQUIRED_INFO = ("sample_rate", "samples_per_code", "codebook_size", "tokenizer_hash")


def save_vocoder(model: WaveNet, directory: str | Path, info: dict) -> None:
    """Write ``config.json`` (WaveNetConfig + ``info``) and ``wavenet.safetensors`` into ``directory``."""
    directory = Path(directory)
    missing = [key for key in REQUIRED_INFO if key not in info]
    if missing:
        raise ValueError(f"vocoder info lacks {', '.join(missing)}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WAVENET_WEIGHTS))
    write_json(directory / CONFIG, {"format": FORMAT, "wavenet": model.config.to_dict(), **info})


class Vocoder:
    """A WaveNet conditioned on one tokenizer's codes. See the module docstring."""

    def __init__(self, model: WaveNet, info: dict, source: str | Path | None = None):
        self.model = model.eval()
        self.info = dict(info)
        self.source = str(source) if source is not None else "vocoder"
        cfg = model.config
        if int(self.info["samples_per_code"]) != cfg.samples_per_code or int(self.info["sample_rate"]) != cfg.sample_rate:
            raise ArtifactError(f"{self.source}: config.json disagrees with its own wavenet section "
                                f"(samples_per_code/sample_rate)")
        if int(self.info["codebook_size"]) != (cfg.codebook_size or 0):
            raise ArtifactError(f"{self.source}: codebook_size {self.info['codebook_size']} but the WaveNet "
                                f"takes {cfg.codebook_size} codes")

    # -- what it was trained on -----------------------------------------------------------
    @property
    def config(self) -> WaveNetConfig:
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def samples_per_code(self) -> int:
        return self.config.samples_per_code

    @property
    def codebook_size(self) -> int:
        return int(self.info["codebook_size"])

    @property
    def tokenizer_hash(self) -> str | None:
        return self.info.get("tokenizer_hash")

    @property
    def code_rate(self) -> float:
        return self.sample_rate / self.samples_per_code

    @property
    def device(self) -> torch.device:
        return self.model._param().device

    def to(self, device) -> "Vocoder":
        self.model.to(device)
        return self

    # -- files ----------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, device=None) -> "Vocoder":
        """Load ``RUN/vocoder`` (config.json + wavenet.safetensors)."""
        directory = Path(directory)
        if not (directory / CONFIG).is_file() or not (directory / WAVENET_WEIGHTS).is_file():
            raise ArtifactError(f"no trained vocoder at {directory}: run `tokenlm vocoder {directory.parent}` first")
        check_outputs(directory)  # missing or truncated files: one line naming the file
        config = read_json(directory / CONFIG)
        if config.get("format") != FORMAT or "wavenet" not in config:
            raise ArtifactError(f"{directory / CONFIG}: not a tokenlm vocoder config")
        missing = [key for key in REQUIRED_INFO if key not in config]
        if missing:
            raise ArtifactError(f"{directory / CONFIG} lacks {', '.join(missing)}: cannot check it against "
                                f"a tokenizer")
        try:
            model = WaveNet(WaveNetConfig.from_dict(config["wavenet"]))
            _check_info(config, model.config)
        except ConfigError as err:
            raise ArtifactError(f"{directory / CONFIG}: {err}") from None
        try:
            model.load_state_dict(load_file(str(directory / WAVENET_WEIGHTS)))
        except Exception as err:  # truncated file (SafetensorError), shapes or names that do not fit (RuntimeError)
            if isinstance(err, MemoryError):
                raise
            raise ArtifactError(f"{directory / WAVENET_WEIGHTS} does not fit its {CONFIG} "
                                f"({str(err).splitlines()[0]})") from None
        info = {k: v for k, v in config.items() if k not in ("format", "wavenet")}
        return cls(model.to(pick_device(device)), info, source=directory)

    # -- checks ---------------------------------------------------------------------------
    def check_tokenizer(self, tokenizer) -> None:
        """Fail with one clear line unless ``tokenizer`` (an AudioTokenizer) makes the codes
        this vocoder was trained on: same sample rate, samples per code, codebook size, hash."""
        where = tokenizer.info.get("codebook_dir") or "the tokenizer"
        pairs = [("sample rate", self.sample_rate, tokenizer.sample_rate),
                 ("samples per code", self.samples_per_code, tokenizer.samples_per_code),
                 ("codebook size", self.codebook_size, tokenizer.codebook_size)]
        for what, mine, theirs in pairs:
            if int(mine) != int(theirs):
                raise ArtifactError(f"{self.source} was trained on codes with {what} {mine}, but {where} has "
                                    f"{theirs}: use the vocoder's tokenizer (-K {self.codebook_size}) or retrain "
                                    f"the vocoder")
        theirs = tokenizer.info.get("tokenizer_hash")
        if self.tokenizer_hash and theirs and self.tokenizer_hash != theirs:
            raise ArtifactError(f"{self.source} was trained on the codes of tokenizer {self.tokenizer_hash}, but "
                                f"{where} is {theirs} (retrained since?): retrain the vocoder "
                                f"(`tokenlm vocoder RUN`)")

    def check_codes(self, codes: np.ndarray, where: str = "codes") -> None:
        if codes.ndim != 1:
            raise ConfigError(f"{where}: codes must be 1-D, got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ArtifactError(f"{where} span [{codes.min()}, {codes.max()}] but this vocoder takes codes "
                                f"0..{self.codebook_size - 1}")

    # -- synthesis ------------------------------------------------------------------------
    def resynthesise(self, codes, *, prompt=None, temperature: float = 1.0, seed: int = 0,
                     progress: bool = False, threads: int | None = 1, layout: str | None = None) -> np.ndarray:
        """Codes (N,) -> float32 audio (N * samples_per_code,) at ``sample_rate``.

        ``prompt``: float audio (P,), (C, P) or (P, C) (numpy or torch; its channel mean; an
        ambiguous 2-D shape needs ``layout``, tokenlm.data.audio_layout) at ``sample_rate`` for the
        first P <= N * samples_per_code samples; it is teacher-forced (mu-law quantised) instead of generated, and the rest
        continues it. ``temperature`` <= 0 takes the likeliest class at each sample.
        """
        codes = _as_codes(codes)
        self.check_codes(codes)
        prompt_q = None
        if prompt is not None:
            prompt = network_signal(self.model, as_mono(prompt, layout, "prompt")[: len(codes) * self.samples_per_code],
                                    codes)
            prompt_q = mu_law_encode(torch.from_numpy(prompt), self.config.n_classes).unsqueeze(0)  # (1, P)
        return self._generate(codes[None], temperature, seed, progress, threads, prompt_q=prompt_q)[0]

    def resynthesise_batch(self, clips: Sequence, *, temperature: float = 1.0, seed: int = 0, batch_size: int = 8,
                           progress: bool = False, threads: int | None = 1) -> list[np.ndarray]:
        """Several clips' codes -> their audio, ``batch_size`` clips per generation pass.

        A step costs nearly the same for 1 clip as for 8 (per-op overhead dominates), so
        batching is the cheap way to throughput. Clips are grouped by length; shorter clips of
        a batch are padded with their last code and their audio trimmed.
        """
        clips = [_as_codes(c) for c in clips]
        for i, c in enumerate(clips):
            self.check_codes(c, where=f"clip {i}")
        out: list[np.ndarray | None] = [None] * len(clips)
        order = sorted(range(len(clips)), key=lambda i: -len(clips[i]))
        for b, start in enumerate(range(0, len(order), batch_size)):
            chunk = order[start:start + batch_size]
            width = max(1, len(clips[chunk[0]]))
            padded = np.stack([np.pad(clips[i], (0, width - len(clips[i])), mode="edge") if len(clips[i])
                               else np.zeros(width, np.int64) for i in chunk])
            audio = self._generate(padded, temperature, seed + b, progress, threads)
            for row, i in enumerate(chunk):
                out[i] = audio[row, : len(clips[i]) * self.samples_per_code]
        return out

    @torch.no_grad()
    def _generate(self, codes: np.ndarray, temperature, seed, progress, threads, prompt_q=None) -> np.ndarray:
        """(B, N) codes -> (B, N * samples_per_code) float32 audio (pre-emphasis undone)."""
        device = self.device
        if codes.shape[1] == 0:
            return np.zeros((codes.shape[0], 0), np.float32)
        generator = torch.Generator(device=device).manual_seed(int(seed))
        # One thread on CPU: a sample step is ~150 tiny ops (scripts/bench_wavenet.py).
        with kernel_threads(threads if device.type == "cpu" else None):
            audio = self.model.generate(torch.from_numpy(codes).to(device), temperature=temperature,
                                        generator=generator, prompt_q=prompt_q, progress=progress)
        audio = audio.float().cpu().numpy()
        return np.stack([audio_from_network(self.model, row, clip) for row, clip in zip(audio, codes)])


def _check_info(config: dict, wavenet: WaveNetConfig) -> None:
    """The facts about the codes in a vocoder's config.json: integers (K at least 2), and the
    ones the WaveNet config repeats agree with it."""
    for key in ("sample_rate", "samples_per_code", "codebook_size"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "codebook_size" else 1):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if config["sample_rate"] != wavenet.sample_rate or config["samples_per_code"] != wavenet.samples_per_code:
        raise ConfigError(f"sample_rate/samples_per_code {config['sample_rate']}/{config['samples_per_code']} "
                          f"disagree with its wavenet section ({wavenet.sample_rate}/{wavenet.samples_per_code})")
    if config["codebook_size"] != (wavenet.codebook_size or 0):
        raise ConfigError(f"codebook_size {config['codebook_size']} but the WaveNet takes {wavenet.codebook_size} codes")


def network_signal(model: WaveNet, wav: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """A clip's audio (T <= N * samples_per_code) -> the float signal its WaveNet models: the
    audio pre-emphasised, then whitened by the codes' linear predictor when ``lpc_order``."""
    cfg = model.config
    signal = pre_emphasis(wav, cfg.pre_emphasis)
    if cfg.lpc_order:
        hop = cfg.samples_per_code // cfg.frames_per_code
        signal = lpc.analyse(signal, lpc.code_frames(model.code_lpc.cpu().numpy(), codes), hop, cfg.lpc_gain)
    return signal


def audio_from_network(model: WaveNet, signal: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The inverse of ``network_signal``: what the WaveNet sampled (T,) -> audio (T,)."""
    cfg = model.config
    if cfg.lpc_order:
        hop = cfg.samples_per_code // cfg.frames_per_code
        signal = lpc.synthesise(signal, lpc.code_frames(model.code_lpc.cpu().numpy(), codes), hop)
    return de_emphasis(signal, cfg.pre_emphasis)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM wav (clipped to [-1, 1]), its folder made if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


def publish_wav(path: str | Path, audio: np.ndarray, sample_rate: int, legacy=None) -> Path:
    """``write_wav``'s file at a path of the user's (``--out``), by tokenlm.core.outputs' rule:
    atomic, and never over a file tokenlm did not write."""
    import io

    from tokenlm.core.outputs import publish_bytes

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16",
             format="WAV")
    publish_bytes(path, buffer.getvalue(), legacy)
    return Path(path)


def _as_codes(codes) -> np.ndarray:
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ConfigError(f"codes must be integers, got {codes.dtype}")
    return codes.astype(np.int64)
