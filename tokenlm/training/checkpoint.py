"""Checkpoints: atomic writes, weights-only loads, RNG states, and the loop's ``last.pt``.

Everything saved is tensors and plain data, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tokenlm.errors import ArtifactError


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save that readers (and a kill -9) see as all-or-nothing: temp file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by ``train`` (weights_only: nothing but tensors and plain data)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which
        raise ArtifactError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0]})") from None


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
    """Delete the temp files of writes that a kill -9 cut short."""
    for stale in ckpt_dir.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)


def rng_state() -> dict:
    """Python, numpy, torch and CUDA RNG states as tensors and plain numbers
    (loadable with ``torch.load(weights_only=True)``, unlike pickled tuples)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def weights(model: nn.Module) -> dict:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def save_last(path: Path, model, optimizer, scheduler, state: dict, data: dict) -> None:
    """Everything a resume needs: weights, optimiser, schedule, the loop's state, the data
    cursor and the RNG states."""
    atomic_torch_save({
        "model": weights(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state,
        "data": data,
        "rng": rng_state(),
    }, path)


def resume(path: Path, model, optimizer, scheduler, device: torch.device) -> dict | None:
    """Load ``last.pt`` into the fresh model/optimiser/scheduler and restore the RNG states;
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
