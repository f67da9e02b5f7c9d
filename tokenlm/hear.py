"""A finished run's tokenizer + code LM behind the HEAR 2021 API, so that hear-eval-kit
and other harnesses evaluate a tokenlm model like any other:

    from tokenlm import hear
    model = hear.load_model("runs/demo")                     # kwargs: layer, pooling, codebook_size, device
    emb, ts = hear.get_timestamp_embeddings(audio, model)    # audio: float32 (n_sounds, n_samples)
    scene = hear.get_scene_embeddings(audio, model)          # (n_sounds, model.scene_embedding_size)

Embeddings are the LM's hidden states of one layer (0 = token + position embedding, i = the
output of block i): by default the layer the run's probe chose on val (the ``lm_best`` row of
RUN/probe/<task>/, the layer most tasks chose), else the middle block, whose states usually probe better than the last,
which is shaped to predict the next code. Each sound is tokenized on its own (log-mel,
autoencoder, nearest centroid), so its codes never depend on the rest of the batch: codes
are discrete, and a near-tie flipped by a batched matmul would change a whole embedding.
The LM is causal: the state at a code has heard that code and the ones before it only.

Timestamps (ms) are the centres of the codes' patches: frame f of the centred STFT is
centred on sample ``f * hop_length``, and code i spans frames ``i * patch_step`` ..
``i * patch_step + patch_frames - 1``, so timestamps are ``1000 / code_rate`` ms apart.
A sound shorter than one patch still gives one code (padded, as the tokenizer does).

Scene embeddings pool the timestamp embeddings over time as the probe does
(tokenlm.evaluation.pooling): ``pooling="mean"`` (default), ``"mean+std"`` or ``"mean+max"``
(twice the size). The probe
chooses its pooling on val per task (its results record which); a harness that wants one
fixed size per model gets the mean unless it asks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.fileio import read_json
from tokenlm.core.runtime import pick_device
from tokenlm.data.audio_layout import as_mono
from tokenlm.evaluation.pooling import POOLINGS, pool, time_statistics
from tokenlm.lm.code_lm import CodeLM
from tokenlm.run.artifacts import read_stage, stage_key
from tokenlm.run.rundir import CONFIG, META, RESULTS, RunDir, is_finished
from tokenlm.tokenizer.tokenizer import AudioTokenizer

__all__ = ["TokenlmEmbedding", "load_model", "get_timestamp_embeddings", "get_scene_embeddings"]

# Codes per CodeLM.hidden_states call: it holds every layer's states of its clips at once.
CODES_PER_CALL = 1 << 14


class TokenlmEmbedding(torch.nn.Module):
    """The HEAR model object: the tokenizer's autoencoder and the LM as submodules (so that
    ``.to(device)`` moves both), and the attributes the API asks for."""

    def __init__(self, tokenizer: AudioTokenizer, lm: CodeLM, layer: int, pooling: str):
        super().__init__()
        self.tokenizer, self.lm = tokenizer, lm  # plain attributes (not modules)
        self.coder, self.gpt = tokenizer.coder, lm.model  # registered: moved by .to()
        self.layer, self.pooling = layer, pooling
        self.sample_rate = int(tokenizer.sample_rate)
        self.timestamp_embedding_size = int(lm.hidden_size)
        self.scene_embedding_size = int(lm.hidden_size) * len(pooling.split("+"))
        self.eval()

    def train(self, mode: bool = True) -> "TokenlmEmbedding":
        """Always eval: an embedding model never runs dropout (determinism)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.tokenizer.device

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, codebook_size={self.tokenizer.codebook_size}, "
                f"layer={self.layer}/{self.lm.num_layers}, pooling={self.pooling!r}")


# ---- the HEAR API ---------------------------------------------------------------------

def load_model(model_file_path: str = "", *, layer: int | None = None, pooling: str = "mean",
               codebook_size: int | None = None, device: str | None = None, **unknown) -> TokenlmEmbedding:
    """A finished run's tokenizer and LM. ``model_file_path`` is the run directory (RUN with
    tokenizer/ and lm/). ``codebook_size`` picks the LM trained on K-code tokens (RUN/lm, or
    the sweep's RUN/sweep_k/k{K}/lm); ``layer`` overrides the default layer (module
    docstring); ``device`` defaults to CUDA when available."""
    if unknown:
        raise ConfigError(f"load_model got unknown options {', '.join(sorted(unknown))} "
                          "(it takes layer, pooling, codebook_size, device)")
    if not model_file_path:
        raise ConfigError("load_model needs a tokenlm run directory (RUN with tokenizer/ and lm/)")
    run = RunDir(model_file_path)
    if not run.root.is_dir():
        raise ArtifactError(f"{run.root}: no such run directory")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    torch_device = pick_device(device)
    lm_dir, probe_dir = _lm_folders(run, codebook_size)
    lm = CodeLM.load(lm_dir, device=torch_device)
    tokenizer = AudioTokenizer.load(run.tokenizer, codebook_size=lm.codebook_size, device=torch_device)
    _check_lm_reads_tokenizer(run, lm_dir, tokenizer)
    layer = _check_layer(layer, lm) if layer is not None else default_layer(lm, lm_dir, probe_dir)
    return TokenlmEmbedding(tokenizer, lm, layer, pooling)


def get_timestamp_embeddings(audio: torch.Tensor, model: TokenlmEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
    """``audio`` (n_sounds, n_samples) at ``model.sample_rate`` -> (embeddings
    (n_sounds, n_timestamps, timestamp_embedding_size) float32, timestamps (n_sounds,
    n_timestamps) in ms), on ``audio``'s device."""
    states = _layer_states(audio, model)
    embeddings = torch.stack(states)  # every sound has as many samples, so as many codes
    features = model.tokenizer.coder.features
    centres = torch.arange(embeddings.shape[1], dtype=torch.float64) * features.patch_step + (features.patch_frames - 1) / 2
    timestamps = (centres * (1000.0 * features.hop_length / features.sample_rate)).float()
    return embeddings.to(audio.device), timestamps.expand(len(states), -1).contiguous().to(audio.device)


def get_scene_embeddings(audio: torch.Tensor, model: TokenlmEmbedding) -> torch.Tensor:
    """``audio`` (n_sounds, n_samples) -> (n_sounds, scene_embedding_size) float32: the
    timestamp embeddings pooled over time (``model.pooling``)."""
    pooled = [pool(time_statistics(states.float().cpu().numpy()), model.pooling)  # states: (T, d), T >= 1
              for states in _layer_states(audio, model)]
    return torch.from_numpy(np.stack(pooled)).to(audio.device)


# ---- the embeddings -------------------------------------------------------------------

@torch.no_grad()
def _layer_states(audio: torch.Tensor, model: TokenlmEmbedding) -> list[torch.Tensor]:
    """One (codes, d) float32 CPU tensor per sound: the chosen layer's hidden states."""
    audio = _check_audio(audio, model.sample_rate)
    model.lm.device = model.device  # follow a .to() made on the module since loading
    codes = [model.tokenizer.encode_frames(model.coder.log_mel(wav.to(model.device))) for wav in audio]
    per_call = max(1, CODES_PER_CALL // len(codes[0]))
    states = []
    for start in range(0, len(codes), per_call):
        layers = model.lm.hidden_states(codes[start:start + per_call], batch_size=64)  # [(layers+1, T, d)]
        states += [s[model.layer].clone() for s in layers]  # a copy: a view would keep every layer alive
    return states


def _check_audio(audio, sample_rate: int) -> torch.Tensor:
    """A (n_sounds, n_samples) float tensor of finite samples, as float32. The HEAR API's layout is
    (n_sounds, n_samples), mono; a 3-D batch of multichannel sounds is mixed to mono, each
    sound's layout read as ``AudioTokenizer.encode`` reads it (tokenlm.data.audio_layout)."""
    if not isinstance(audio, torch.Tensor):
        raise ConfigError(f"audio must be a torch.Tensor (n_sounds, n_samples), got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise ConfigError(f"audio must be float samples at {sample_rate} Hz, got dtype {audio.dtype}")
    if audio.dim() == 3 and audio.shape[0] > 0:  # multichannel sounds: each one's channel mean
        audio = torch.stack([torch.from_numpy(as_mono(sound, what=f"sound {i}")) for i, sound in enumerate(audio)]).to(audio.device)
    if audio.dim() != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ConfigError(f"audio must have shape (n_sounds, n_samples) (or (n_sounds, channels, n_samples)) "
                          f"with both > 0, got {tuple(audio.shape)}")
    if not torch.isfinite(audio).all():
        raise ConfigError("audio has samples that are not finite (NaN or inf)")
    return audio.float()


# ---- which LM, which layer --------------------------------------------------------------

def _lm_folders(run: RunDir, codebook_size: int | None) -> tuple[Path, Path]:
    """(LM folder, the probe folder that scored it): RUN/lm, or with ``codebook_size`` the
    LM trained on K-code tokens among RUN/lm and the sweep's RUN/sweep_k/k{K}/lm."""
    if codebook_size is None:
        return run.lm, run.probe
    candidates = [(run.lm, run.probe), (run.sweep_k(codebook_size).lm, run.sweep_k(codebook_size).probe)]
    for lm_dir, probe_dir in candidates:
        if is_finished(lm_dir) and _lm_codebook_size(lm_dir) == codebook_size:
            return lm_dir, probe_dir
    raise ArtifactError(f"{run.root} has no LM trained on K={codebook_size} tokens "
                        f"(looked in {candidates[0][0]} and {candidates[1][0]})")


def _check_lm_reads_tokenizer(run: RunDir, lm_dir: Path, tokenizer: AudioTokenizer) -> None:
    """Refuse an LM trained on the codes of another tokenizer (say, the autoencoder was
    retrained since): its states of these codes would mean nothing. Checked through the
    tokens it was trained on, when they are still the ones on disk."""
    tokens_dir = run.tokens(tokenizer.codebook_size)
    if not (is_finished(lm_dir) and is_finished(tokens_dir)):
        return
    if read_stage(lm_dir).get("inputs", {}).get("tokens") != stage_key(tokens_dir):
        return  # the tokens were rebuilt since: nothing left to compare with
    made_by = read_json(tokens_dir / META).get("tokenizer_hash")
    if made_by is not None and tokenizer.info.get("tokenizer_hash") not in (None, made_by):
        raise ArtifactError(f"{lm_dir} was trained on codes of another tokenizer than {tokenizer.info['codebook_dir']} "
                            f"(retrain it: `tokenlm pretrain {run.root}`)")


def _lm_codebook_size(lm_dir: Path) -> int | None:
    info = read_json(lm_dir / CONFIG).get("tokenlm") or {}
    return info.get("codebook_size") if isinstance(info, dict) else None


def default_layer(lm: CodeLM, lm_dir: Path, probe_dir: Path) -> int:
    """The layer the probe chose on val for this very LM; else the middle block."""
    chosen = probe_best_layer(lm_dir, probe_dir)
    if chosen is not None and chosen <= lm.num_layers:
        return chosen
    return (lm.num_layers + 1) // 2


def probe_best_layer(lm_dir: Path, probe_dir: Path) -> int | None:
    """The layer the probe chose (``lm_best``) for the LM at ``lm_dir``, over the run's tasks
    (RUN/probe/<task>/): the one chosen most often, the first task's on a tie. None when no
    finished probe read this LM (none yet, the LM skipped, or an LM since retrained)."""
    if not is_finished(lm_dir):
        return None
    chosen = []
    for task_dir in sorted(Path(probe_dir).glob("*")):
        if not is_finished(task_dir) or read_stage(task_dir).get("inputs", {}).get("lm") != stage_key(lm_dir):
            continue
        rows = read_json(task_dir / RESULTS).get("rows", [])
        best = next((row for row in rows if row.get("name") == "lm_best"), None)
        name = str(best.get("layer", "")) if best else ""
        number = name.removeprefix("lm_layer_")
        if name.startswith("lm_layer_") and number.isdigit():
            chosen.append(int(number))
    return max(chosen, key=chosen.count) if chosen else None


def _check_layer(layer, lm: CodeLM) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= lm.num_layers:
        raise ConfigError(f"layer must be an integer in 0..{lm.num_layers} (0 = embeddings), got {layer!r}")
    return int(layer)
