"""Convolutional baselines on log-mel: a VGG-style CNN and a timbre CNN with vertical filters.

Both read normalised log-mel shaped ``(B, 1, n_mels, T)`` and return class logits, or with
``embed`` a pooled clip vector, so a clip of any length gives one vector.

- ``VGGish``: the generic computer-vision recipe, stacks of 3x3 conv + batch norm + ReLU +
  2x2 max-pool, global pooling, linear head. Strong but costly: every layer scans the whole
  time-frequency plane with small filters.
- ``TimbreCNN``: the audio-informed design (Pons et al., "Timbre analysis of music audio
  signals with convolutional neural networks", 2017). One conv layer whose filters are tall
  (a large fraction of the mel axis) and narrow (a few frames), so each filter matches a
  spectral envelope, i.e. timbre; max-pooling over frequency makes it pitch-shift tolerant,
  max-pooling over time makes it position-free. Far fewer FLOPs than VGG.

Also here: ``count_flops`` (forward hooks, no extra dependency), ``count_parameters``,
safetensors save/load with the config beside the weights, and the supervised training loop
(random crops for training, averaged whole-clip windows for evaluation, early stopping on
val accuracy) shared by both models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenlm.config import build
from tokenlm.errors import ArtifactError

__all__ = [
    "VGGConfig",
    "VGGish",
    "TimbreConfig",
    "TimbreCNN",
    "TrainConfig",
    "count_flops",
    "count_parameters",
    "save_model",
    "load_model",
    "random_crops",
    "clip_windows",
    "embed_clips",
    "predict_clips",
    "train_classifier",
]


# --------------------------------------------------------------------------- VGG


@dataclass(frozen=True)
class VGGConfig:
    """VGG-style CNN. ``n_classes=0`` builds the trunk only (e.g. for SimCLR)."""

    n_mels: int = 64
    n_classes: int = 0
    channels: tuple[int, ...] = (32, 64, 128, 256)  # one block per entry, each halves F and T
    convs_per_block: int = 2
    dropout: float = 0.3

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1 or self.convs_per_block < 1:
            raise ValueError("channels must be a non-empty list of positive ints, convs_per_block >= 1")


class VGGish(nn.Module):
    """Log-mel (B, 1, F, T) -> logits (B, n_classes); ``embed`` gives (B, channels[-1])."""

    def __init__(self, config: VGGConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch in config.channels:
            for _ in range(config.convs_per_block):
                # No conv bias: batch norm's shift does that job.
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
                in_ch = out_ch
            # ceil_mode keeps at least one cell, so a clip shorter than 2**blocks frames still works.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.trunk = nn.Sequential(*layers)
        self.embed_dim = config.channels[-1]
        self.head = _head(self.embed_dim, config.n_classes, config.dropout)

    def embed(self, x: Tensor) -> Tensor:
        h = self.trunk(x)  # (B, C, F', T')
        h = h.mean(dim=2)  # (B, C, T'): frequency averaged out
        # max + mean over time: max catches short events, mean the texture (as in PANNs).
        return h.amax(dim=-1) + h.mean(dim=-1)  # (B, C)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


# --------------------------------------------------------------------------- timbre


@dataclass(frozen=True)
class TimbreConfig:
    """Single-layer CNN with vertical filters; one branch per (height, width) pair."""

    n_mels: int = 64
    n_classes: int = 0
    heights: tuple[float, ...] = (0.9, 0.5, 0.2)  # filter height as a fraction of n_mels
    widths: tuple[int, ...] = (1, 3)  # filter width in frames (odd: keeps T)
    filters: int = 32  # per branch
    dropout: float = 0.3

    def __post_init__(self):
        if not self.heights or not all(0 < h <= 1 for h in self.heights):
            raise ValueError(f"heights are fractions of the mel axis in (0, 1], got {self.heights}")
        if not self.widths or not all(w >= 1 and w % 2 == 1 for w in self.widths):
            raise ValueError(f"widths must be odd positive frame counts, got {self.widths}")
        if self.filters < 1:
            raise ValueError("filters must be positive")

    @property
    def kernel_sizes(self) -> list[tuple[int, int]]:
        heights = sorted({max(1, round(h * self.n_mels)) for h in self.heights}, reverse=True)
        return [(h, w) for h in heights for w in self.widths]


class TimbreCNN(nn.Module):
    """Log-mel (B, 1, F, T) -> logits; ``embed`` gives (B, filters * branches)."""

    def __init__(self, config: TimbreConfig):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(1, config.filters, (h, w), padding=(0, w // 2), bias=False),
                nn.BatchNorm2d(config.filters),
                nn.ReLU(),
            )
            for h, w in config.kernel_sizes
        )
        self.embed_dim = config.filters * len(self.branches)
        self.head = _head(self.embed_dim, config.n_classes, config.dropout)

    def embed(self, x: Tensor) -> Tensor:
        pooled = []
        for branch in self.branches:
            h = branch(x)  # (B, filters, F - height + 1, T)
            pooled.append(h.amax(dim=(2, 3)))  # (B, filters): max over frequency and time
        return torch.cat(pooled, dim=1)  # (B, filters * branches)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def _head(dim: int, n_classes: int, dropout: float) -> nn.Module:
    if n_classes <= 0:
        return nn.Identity()
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))


MODELS = {"vgg": (VGGConfig, VGGish), "timbre": (TimbreConfig, TimbreCNN)}


# --------------------------------------------------------------------------- cost


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, ...], method: str = "forward") -> int:
    """FLOPs of one example of ``input_shape`` (no batch axis), e.g. ``(1, n_mels, frames)``.

    Counts the multiply-accumulates of convolutions and linear layers (2 FLOPs each), which
    dominate; batch norm, activations and pooling are left out. ``method`` picks what runs:
    ``"forward"`` (with the head) or ``"embed"``.
    """
    macs = 0

    def conv_hook(module, _inputs, output):
        nonlocal macs
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        macs += output.numel() * per_output

    def linear_hook(module, _inputs, output):
        nonlocal macs
        macs += output.numel() * module.in_features

    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            hooks.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            getattr(model, method)(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return 2 * macs


# --------------------------------------------------------------------------- save / load


def save_model(model: nn.Module, directory: str | Path, extra: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (kind, config, ``extra`` e.g. class names)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kind = next(name for name, (_, cls) in MODELS.items() if isinstance(model, cls))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    record = {"kind": kind, "config": dataclasses.asdict(model.config), **(extra or {})}
    (directory / "config.json").write_text(json.dumps(record, indent=2) + "\n")


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model`; returns (model in eval mode, config.json)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise ArtifactError(f"{directory} has no saved CNN (config.json + model.safetensors)")
    record = json.loads(config_path.read_text())
    if record.get("kind") not in MODELS:
        raise ArtifactError(f"{config_path}: unknown model kind {record.get('kind')!r}")
    config_cls, model_cls = MODELS[record["kind"]]
    model = model_cls(build(config_cls, record["config"], where=str(config_path)))
    model.load_state_dict(load_file(str(weights_path)))
    return model.to(device).eval(), record


# --------------------------------------------------------------------------- crops


def _fit_length(clip: np.ndarray, frames: int) -> np.ndarray:
    """Loop a clip shorter than ``frames`` (T, F) until it is long enough."""
    if len(clip) >= frames:
        return clip
    return np.tile(clip, (math.ceil(frames / max(len(clip), 1)), 1))[:frames]


def random_crops(clips: list[np.ndarray], frames: int, rng: np.random.Generator) -> Tensor:
    """One random ``frames``-long crop per clip (T, F) -> batch (B, 1, F, frames) float32."""
    batch = []
    for clip in clips:
        clip = _fit_length(clip, frames)
        start = int(rng.integers(0, len(clip) - frames + 1))
        batch.append(clip[start : start + frames])
    return torch.from_numpy(np.stack(batch).astype(np.float32)).transpose(1, 2).unsqueeze(1)


def clip_windows(clip: np.ndarray, frames: int) -> np.ndarray:
    """Cover a whole clip (T, F) with ``frames``-long windows -> (W, F, frames).

    Windows do not overlap except the last, which ends on the clip's last frame so that no
    frame is left out; a short clip is looped to one window.
    """
    clip = _fit_length(clip, frames)
    starts = list(range(0, len(clip) - frames + 1, frames))
    if starts[-1] + frames < len(clip):
        starts.append(len(clip) - frames)
    return np.stack([clip[s : s + frames].T for s in starts])


def _windowed_outputs(fn: Callable[[Tensor], Tensor], clips, frames, device, batch_windows=256) -> Tensor:
    """``fn`` on every window of every clip, averaged per clip -> (N, D) on CPU."""
    windows, owner = [], []
    for i, clip in enumerate(clips):
        w = clip_windows(clip, frames)
        windows.append(w)
        owner.extend([i] * len(w))
    stacked = np.concatenate(windows).astype(np.float32)  # (W, F, frames)
    outputs = []
    with torch.no_grad():
        for s in range(0, len(stacked), batch_windows):
            x = torch.from_numpy(stacked[s : s + batch_windows]).unsqueeze(1).to(device)  # (b, 1, F, T)
            outputs.append(fn(x).float().cpu())
    outputs = torch.cat(outputs)  # (W, D)
    owner_t = torch.tensor(owner)
    sums = torch.zeros(len(clips), outputs.shape[1]).index_add_(0, owner_t, outputs)
    counts = torch.bincount(owner_t, minlength=len(clips)).clamp_min(1).unsqueeze(1)
    return sums / counts


def embed_clips(model: nn.Module, clips: list[np.ndarray], frames: int, device="cpu") -> np.ndarray:
    """One vector per clip: ``model.embed`` averaged over the clip's windows -> (N, D)."""
    if not clips:
        return np.zeros((0, model.embed_dim), dtype=np.float32)
    model.eval()
    return _windowed_outputs(model.embed, clips, frames, device).numpy()


def predict_clips(model: nn.Module, clips: list[np.ndarray], frames: int, device="cpu") -> np.ndarray:
    """Class log-probabilities per clip, averaged over its windows -> (N, n_classes)."""
    model.eval()
    return _windowed_outputs(lambda x: F.log_softmax(model(x), dim=-1), clips, frames, device).numpy()


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training of a CNN baseline."""

    crop_frames: int = 100  # 1 s at a 10 ms hop
    batch_size: int = 32
    epochs: int = 60
    patience: int = 10  # epochs without a better val accuracy before stopping
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


def train_classifier(
    model: nn.Module,
    train: tuple[list[np.ndarray], np.ndarray],
    val: tuple[list[np.ndarray], np.ndarray],
    config: TrainConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
) -> dict:
    """Cross-entropy on random crops; keeps the weights of the best val-accuracy epoch.

    ``train``/``val`` are (clips, class indices) with clips normalised log-mel (T, F). With
    no val clips, every epoch runs and the last weights are kept. Returns the history and
    the early-stopping summary; ``model`` ends with the best weights, in eval mode.
    """
    from tqdm.auto import tqdm

    clips, labels = train
    val_clips, val_labels = val
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best = {"epoch": 0, "val_accuracy": -1.0, "state": None}
    history, start = [], time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        train_loss = _train_epoch(model, clips, labels, config, optimiser, rng, device)
        row = {"epoch": epoch, "train_loss": train_loss}
        if len(val_clips):
            log_probs = predict_clips(model, val_clips, config.crop_frames, device)
            row["val_accuracy"] = float(np.mean(log_probs.argmax(1) == val_labels))
            if row["val_accuracy"] > best["val_accuracy"]:
                best = {"epoch": epoch, "val_accuracy": row["val_accuracy"], "state": _cpu_state(model)}
        history.append(row)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=row.get("val_accuracy"))
        if len(val_clips) and epoch - best["epoch"] >= config.patience:
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {
        "history": history,
        "epochs_run": len(history),
        "best_epoch": best["epoch"] or len(history),
        "best_val_accuracy": best["val_accuracy"] if best["state"] is not None else None,
        "train_seconds": round(time.perf_counter() - start, 3),
    }


def _train_epoch(model, clips, labels, config, optimiser, rng, device) -> float:
    """One pass over the train clips (one random crop each); mean loss."""
    model.train()
    order = rng.permutation(len(clips))
    total, count = 0.0, 0
    for s in range(0, len(order), config.batch_size):
        index = order[s : s + config.batch_size]
        if len(index) < 2 and len(order) > 1:
            continue  # batch norm cannot train on a single example
        x = random_crops([clips[i] for i in index], config.crop_frames, rng).to(device)  # (B, 1, F, T)
        y = torch.as_tensor(labels[index], dtype=torch.long, device=device)
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += loss.item() * len(index)
        count += len(index)
    return total / max(count, 1)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
