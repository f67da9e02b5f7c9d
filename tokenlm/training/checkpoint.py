"""Checkpoints without pickles: tensors in safetensors, everything else in a JSON state file.

A checkpoint ``ckpt/last.json`` is the commit point: it holds the plain data (step, scheduler,
early-stopping state, RNG states as lists) and names the safetensors file that holds its
tensors (weights, optimiser moments). The tensors file is written first under a fresh name,
then the JSON atomically, then the previous tensors file is removed, so a kill -9 at any
moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import fsync_dir, os_error_of, write_json

FORMAT = "tokenlm-checkpoint/1"
_TENSOR = "__tensor__"  # {"__tensor__": name}: the tensor `name` of the safetensors file
_ITEMS = "__items__"  # {"__items__": [[key, value], ...]}: a dict with non-string keys (optimiser state)


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Write ``obj`` (nested dicts/lists of tensors and plain data) as ``path`` (the .json
    state file) plus a safetensors file beside it; all-or-nothing for readers and kill -9."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    state = _split(obj, tensors, "")
    tensor_file = path.with_name(f"{path.stem}-{uuid.uuid4().hex[:12]}.safetensors")
    tmp = tensor_file.with_name(f".{tensor_file.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp))
    except Exception as err:  # safetensors' own error type, even for a full disk
        tmp.unlink(missing_ok=True)
        raise os_error_of(err, tensor_file) from None
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, tensor_file)
    write_json(path, {"format": FORMAT, "tensors": tensor_file.name, "state": state})
    for old in path.parent.glob(f"{path.stem}-*.safetensors"):
        if old != tensor_file:
            old.unlink(missing_ok=True)
    fsync_dir(path.parent)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by ``save_checkpoint`` (its .json path), tensors on ``device``."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        tensors = load_file(str(path.with_name(record["tensors"])), device=str(device))
        return _join(record["state"], tensors)
    except Exception as err:  # a truncated or foreign file: say which
        raise ArtifactError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0]})") from None


def _split(value: Any, tensors: dict, name: str) -> Any:
    """``value`` as JSON data, its tensors moved into ``tensors`` under their path names."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: name}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _split(v, tensors, f"{name}/{k}") for k, v in value.items()}
        return {_ITEMS: [[k, _split(v, tensors, f"{name}/{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_split(v, tensors, f"{name}/{i}") for i, v in enumerate(value)]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _join(value: Any, tensors: dict) -> Any:
    """The inverse of ``_split``."""
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_ITEMS}:
            return {k: _join(v, tensors) for k, v in value[_ITEMS]}
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


@contextmanager
def checkpoint_folder(work_dir: str | Path | None):
    """The folder a training keeps its checkpoints in: ``work_dir`` (a rerun resumes from
    it), or without one a temporary folder removed afterwards (no resume)."""
    if work_dir is not None:
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="tokenlm-train-") as tmp:
        yield Path(tmp)


def remove_partial_writes(ckpt_dir: Path) -> None:
    """Delete the temp files of writes that a kill -9 cut short, and tensor files that no
    state file names (written, then the kill came before their state file)."""
    for stale in ckpt_dir.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    named = set()
    for state in ckpt_dir.glob("*.json"):
        try:
            named.add(json.loads(state.read_text()).get("tensors"))
        except (OSError, ValueError, AttributeError):
            continue
    for tensor_file in ckpt_dir.glob("*.safetensors"):
        if tensor_file.name not in named:
            tensor_file.unlink(missing_ok=True)


def rng_state() -> dict:
    """Python, numpy, torch and CUDA RNG states as plain lists and numbers (JSON)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"name": np_name, "keys": np_keys.astype(np.int64).tolist(), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in _as_list(py["state"])), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], np.asarray(_as_list(nps["keys"]), dtype=np.int64).astype(np.uint32),
                         nps["pos"], nps["has_gauss"], nps["gauss"]))
    torch.set_rng_state(_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [_bytes(s) for s in state["cuda"][: torch.cuda.device_count()]]
        torch.cuda.set_rng_state_all(cuda_states)


def _as_list(value) -> list:
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)


def _bytes(value) -> torch.Tensor:
    return value.cpu() if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.uint8)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def weights(model: nn.Module) -> dict:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def save_last(path: Path, model, optimizer, scheduler, state: dict, data: dict) -> None:
    """Everything a resume needs: weights, optimiser, schedule, the loop's state, the data
    cursor and the RNG states."""
    save_checkpoint({
        "model": weights(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state,
        "data": data,
        "rng": rng_state(),
    }, path)


def resume(path: Path, model, optimizer, scheduler, device: torch.device) -> dict | None:
    """Load ``last.json`` into the fresh model/optimiser/scheduler and restore the RNG states;
    returns the checkpoint (its ``state`` and ``data`` are the caller's), None without one."""
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path, device)
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ArtifactError(f"{path} does not fit this model ({str(err).splitlines()[0]}); "
                            f"delete {path.parent} to start over") from None
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return ckpt


def say_resuming(step: int, saved_world: int, world_size: int) -> None:
    note = "" if saved_world == world_size else (
        f" (it ran on {saved_world} processes, now {world_size}: the batch order changes from here)")
    print(f"resuming from step {step}{note}", file=sys.stderr, flush=True)
