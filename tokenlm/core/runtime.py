"""Seeds, devices and threads: the small things every stage needs the same way."""

from __future__ import annotations

import importlib
import os
import random
from collections import deque
from concurrent.futures import Executor
from contextlib import contextmanager

import numpy as np
import torch

from tokenlm.core.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str | None = None) -> torch.device:
    """``name`` ('cpu', 'cuda', 'cuda:1') or, when None/'auto', CUDA if present else CPU."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here")
    return device


def cpu_threads() -> int:
    """Threads to give torch on CPU: what this process may run on (respects taskset/cgroups)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@contextmanager
def kernel_threads(n: int | None, *, faiss: bool = False):
    """torch's (and with ``faiss``, FAISS's) intra-op thread count set to ``n`` for the block,
    then restored; ``None`` leaves it alone.

    Clip-sized work (one log-mel, one encode, one WaveNet step) is many tiny ops: extra threads
    only add synchronisation, and when another process shares the cores their waits make each
    op up to 100x slower (measured in scripts/bench_features.py and bench_wavenet.py).
    """
    if n is None:
        yield
        return
    # Through tokenlm.tokenizer.faiss_runtime, which sets up FAISS's BLAS before the first import.
    faiss_lib = importlib.import_module("tokenlm.tokenizer.faiss_runtime").faiss if faiss else None
    # Read both before setting either: torch and FAISS may share one OpenMP runtime.
    previous = torch.get_num_threads()
    faiss_previous = faiss_lib.omp_get_max_threads() if faiss_lib else None
    torch.set_num_threads(n)
    if faiss_lib:
        faiss_lib.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        if faiss_lib:
            faiss_lib.omp_set_num_threads(faiss_previous)


def bounded_map(pool: Executor, fn, items, ahead: int, *, weight=None, budget: float = float("inf")):
    """``pool.map(fn, items)`` in order, with at most ``ahead`` calls submitted and not yet
    consumed: Executor.map submits everything at once and buffers every result, so memory
    would grow with the corpus. With ``weight`` (item -> e.g. seconds of audio), the calls in
    flight also weigh at most ``budget`` together (one call always runs, however heavy)."""
    pending: deque = deque()  # (future, weight)
    load = 0.0
    for item in items:
        cost = weight(item) if weight is not None else 0.0
        while pending and (len(pending) >= ahead or load + cost > budget):
            future, done_cost = pending.popleft()
            load -= done_cost
            yield future.result()
        pending.append((pool.submit(fn, item), cost))
        load += cost
    while pending:
        yield pending.popleft()[0].result()
