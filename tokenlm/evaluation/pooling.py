"""Pooling over time: how a sequence of vectors (bottleneck per patch, LM state per code)
becomes one vector per clip.

Three poolings, all built from the same statistics over time (computed once per clip):
``mean``, ``mean+std`` and ``mean+max`` (the halves concatenated). The probe tries each and
keeps the one with the best val accuracy, or the one its ``pooling`` key fixes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AUTO", "POOLINGS", "check_pooling", "pool", "pooling_candidates", "time_statistics"]

AUTO = "auto"
POOLINGS = ("mean", "mean+std", "mean+max")
STATISTICS = ("mean", "std", "max")


def time_statistics(x: np.ndarray, axis: int = 0) -> dict[str, np.ndarray]:
    """Mean, std and max of ``x`` over ``axis`` (time), float32; zeros for an empty sequence."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[axis] == 0:
        zeros = np.zeros(x.shape[:axis] + x.shape[axis + 1:], dtype=np.float32)
        return {name: zeros for name in STATISTICS}
    return {"mean": x.mean(axis=axis), "std": x.std(axis=axis), "max": x.max(axis=axis)}


def pool(statistics: dict[str, np.ndarray], pooling: str) -> np.ndarray:
    """One pooling of per-clip ``statistics`` ((N, D) each): (N, D) or (N, 2 D)."""
    return np.concatenate([statistics[part] for part in check_pooling(pooling).split("+")], axis=-1)


def pooling_candidates(setting: str, default: str) -> tuple[str, ...]:
    """The poolings to try: the one ``setting`` fixes, or with ``auto`` all of them, the
    representation's ``default`` first (it wins ties on val)."""
    if check_pooling(setting, allow_auto=True) != AUTO:
        return (setting,)
    return (default, *(p for p in POOLINGS if p != default))


def check_pooling(value: str, allow_auto: bool = False) -> str:
    known = ((AUTO,) if allow_auto else ()) + POOLINGS
    if value not in known:
        raise ValueError(f"pooling takes one of {', '.join(known)}, got {value!r}")
    return value
