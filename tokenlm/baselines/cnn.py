"""Everything around the CNN baselines of ``tokenlm.models.cnn`` that is not the network:
random crops for training and whole-clip windows for evaluation, clip embeddings and class
predictions, costs (``count_flops`` by torch's FLOP counter, ``count_parameters``), safetensors
save/load with the config beside the weights, and supervised training on the shared loop
(random crops, accuracy on whole val clips, early stopping on it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenlm.core.config import build
from tokenlm.core.errors import ArtifactError
from tokenlm.models.cnn import MODELS
from tokenlm.run.rundir import CONFIG, MODEL_WEIGHTS
from tokenlm.training import DistContext, EpochBatches, TrainConfig, checkpoint_folder
from tokenlm.training import train as train_loop

__all__ = [
    "ClassifierTraining",
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


# --------------------------------------------------------------------------- cost


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, ...], method: str = "forward") -> int:
    """FLOPs of one example of ``input_shape`` (no batch axis), e.g. ``(1, n_mels, frames)``,
    counted by torch's ``FlopCounterMode`` (tokenlm.core.flops): 2 per multiply-add of the
    convolutions and matrix products (linear layers, attention), which dominate; batch norm,
    activations and pooling are left out. ``method`` picks what runs: ``"forward"`` (with the
    head) or ``"embed"``."""
    from tokenlm.core.flops import forward_flops

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return forward_flops(lambda: getattr(model, method)(torch.zeros(1, *input_shape, device=device)))
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- save / load


def save_model(model: nn.Module, directory: str | Path, extra: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (kind, config, ``extra`` e.g. class names)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kind = getattr(model, "kind", None) or next(name for name, (_, cls) in MODELS.items() if isinstance(model, cls))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MODEL_WEIGHTS))
    record = {"kind": kind, "config": dataclasses.asdict(model.config), **(extra or {})}
    (directory / CONFIG).write_text(json.dumps(record, indent=2) + "\n")


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model`; returns (model in eval mode, config.json)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG, directory / MODEL_WEIGHTS
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


def fit_length(clip: np.ndarray, frames: int) -> np.ndarray:
    """Loop a clip shorter than ``frames`` (T, F) until it is long enough."""
    if len(clip) >= frames:
        return clip
    return np.tile(clip, (math.ceil(frames / max(len(clip), 1)), 1))[:frames]


def random_crops(clips: list[np.ndarray], frames: int, rng: np.random.Generator) -> Tensor:
    """One random ``frames``-long crop per clip (T, F) -> batch (B, 1, F, frames) float32."""
    batch = []
    for clip in clips:
        clip = fit_length(clip, frames)
        start = int(rng.integers(0, len(clip) - frames + 1))
        batch.append(clip[start : start + frames])
    return torch.from_numpy(np.stack(batch).astype(np.float32)).transpose(1, 2).unsqueeze(1)


def clip_windows(clip: np.ndarray, frames: int) -> np.ndarray:
    """Cover a whole clip (T, F) with ``frames``-long windows -> (W, F, frames).

    Windows do not overlap except the last, which ends on the clip's last frame so that no
    frame is left out; a short clip is looped to one window.
    """
    clip = fit_length(clip, frames)
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
class ClassifierTraining:
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
    config: ClassifierTraining,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
    *,
    work_dir: Path | None = None,
    callbacks: Iterable[Callable[[int, dict], None]] = (),
) -> dict:
    """Cross-entropy on random crops; keeps the weights of the best val-accuracy epoch.

    ``train``/``val`` are (clips, class indices) with clips normalised log-mel (T, F).
    With no val clips, every epoch runs and the last weights are kept. Checkpoints go to
    ``work_dir`` (a rerun resumes there) or, without one, a temporary folder; ``callbacks``
    are the training loop's (``f(step, record)`` after every step). Returns the history and
    the early-stopping summary; ``model`` ends with the best weights, in eval mode.
    """
    clips, labels = train
    val_clips, val_labels = val

    def batch(rng, indices):
        crops = random_crops([clips[i] for i in indices], config.crop_frames, rng)  # (B, 1, F, T)
        return crops, torch.as_tensor(labels[indices], dtype=torch.long)

    def accuracy(model):
        log_probs = predict_clips(model, val_clips, config.crop_frames, device)
        return {"val_accuracy": float(np.mean(log_probs.argmax(1) == val_labels))}

    # Batch norm cannot train on a single example: an epoch's lone last clip waits for the next.
    data = EpochBatches(len(clips), config.batch_size, batch, min_batch=2 if len(clips) > 1 else 1)
    loop = TrainConfig.for_epochs(data, config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                                  patience=config.patience, seed=config.seed)
    with checkpoint_folder(work_dir) as folder:
        result = train_loop(model, loop, folder, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                            train_batch=data, evaluate=accuracy if len(val_clips) else None,
                            monitor="val_accuracy", mode="max", dist=DistContext.single(device),
                            progress=progress, callbacks=callbacks, desc=desc)
    epoch = data.steps_per_epoch
    history = [{"epoch": h["step"] // epoch, "train_loss": h["train_loss"],
                **({"val_accuracy": h["val_accuracy"]} if "val_accuracy" in h else {})} for h in result.history]
    return {
        "history": history,
        "epochs_run": len(history),
        "best_epoch": result.best_step // epoch if result.best_step else len(history),
        "best_val_accuracy": result.best_value,
        "train_seconds": result.elapsed_s,
    }
