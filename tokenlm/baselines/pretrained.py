"""ImageNet weights from a local file for the ImageNet-style CNNs (``tokenlm.models.imagenet``),
to fine-tune from instead of a random start. Never downloads anything.

    load_imagenet_weights(model, "resnet18.safetensors")

The file is a safetensors file or a torch state dict (``torch.load(weights_only=True)``:
tensors only, no code runs), possibly wrapped as {"state_dict": ...} or {"model": ...}.
Names are mapped to the project's (a "module." prefix of DataParallel dropped; DenseNet's old
"norm.1" spelled "norm1", as torchvision does), the 1000-class head is left out (the task
has its own classes), and every other tensor must be there with the model's shape: a
missing, unknown or misshapen tensor is a one-line ConfigError naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from tokenlm.core.errors import ConfigError

__all__ = ["load_imagenet_weights", "read_state_dict"]

_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
_OPTIONAL = "num_batches_tracked"  # batch-norm counters: older checkpoints lack them, and they are not weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch state dict, by name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input: one line
        raise ConfigError(f"weights {path}: cannot read it as safetensors or a torch state dict "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights {path}: not a state dict of tensors")
    return {_project_name(k): v for k, v in state.items()}


def _project_name(name: str) -> str:
    name = name.removeprefix("module.")
    return _DENSENET_OLD.sub(r"\1\2", name)


def load_imagenet_weights(model: nn.Module, path: str | Path) -> int:
    """Load every tensor but the head's from ``path`` into ``model``; return how many."""
    head = f"{model.head_name}."
    kind = getattr(model, "kind", type(model).__name__)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(head)}
    wanted = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    missing = [k for k in wanted if k not in state and not k.endswith(_OPTIONAL)]
    if missing:
        raise ConfigError(f"weights {path}: missing key '{missing[0]}' ({len(missing)} missing; "
                          f"is it a {kind} checkpoint?)")
    unknown = [k for k in state if k not in wanted]
    if unknown:
        raise ConfigError(f"weights {path}: unexpected key '{unknown[0]}' (not a tensor of {kind})")
    for name, tensor in state.items():
        if tensor.shape != wanted[name].shape:
            raise ConfigError(f"weights {path}: '{name}' has shape {tuple(tensor.shape)} but {kind} needs "
                              f"{tuple(wanted[name].shape)} (ImageNet weights need the full width)")
    model.load_state_dict(state, strict=False)
    return len(state)
