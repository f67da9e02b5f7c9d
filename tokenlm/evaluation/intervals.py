"""95% confidence intervals for test scores: how far a difference between rows means something.

- A test split: a seeded percentile bootstrap over test clips. The clips are resampled with
  replacement ``resamples`` times, accuracy and macro-F1 are recomputed on each resample (all
  at once, in numpy), and the interval is the middle ``level`` of those values.
- Official folds: a t-interval of the mean over folds (sample std, k - 1 degrees of freedom),
  clipped to [0, 1]. Folds, not clips, are the unit that repeats there.

Both come back as plain dicts to merge into a results row: ``accuracy_ci`` and
``macro_f1_ci`` as ``[lo, hi]``, and ``ci`` saying how they were computed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LEVEL", "RESAMPLES", "bootstrap_intervals", "fold_intervals"]

LEVEL = 0.95
RESAMPLES = 1000  # a few hundred clips: tens of milliseconds, the interval stable to ~0.5 points


def bootstrap_intervals(truth, predicted, *, level: float = LEVEL, resamples: int = RESAMPLES,
                        seed: int = 0) -> dict:
    """Percentile-bootstrap intervals of accuracy and macro-F1 over test clips.

    ``truth`` and ``predicted`` are (N,) labels of any one type. Macro-F1 on a resample
    averages over the classes present in its truth or predictions, as sklearn's does.
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if len(truth) != len(predicted) or len(truth) == 0:
        raise ValueError(f"a bootstrap needs as many predictions as labels, at least one: "
                         f"{len(truth)} labels, {len(predicted)} predictions")
    _, codes = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
    t, p = codes[:len(truth)], codes[len(truth):]
    n, n_classes = len(t), int(codes.max()) + 1
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (B, n) clip indices
    t, p = t[picks], p[picks]
    correct = t == p
    accuracy = correct.mean(axis=1)
    # Per resample and class: true, predicted and correct counts, via one bincount each.
    offset = np.arange(resamples)[:, None] * n_classes
    counts = lambda where, labels: np.bincount((offset + labels)[where], minlength=resamples * n_classes).reshape(
        resamples, n_classes)
    everywhere = np.ones_like(correct)
    hits, support = counts(correct, t), counts(everywhere, t) + counts(everywhere, p)
    present = support > 0
    f1 = np.where(present, 2 * hits / np.maximum(support, 1), 0.0)
    macro_f1 = f1.sum(axis=1) / present.sum(axis=1)
    tails = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    return {
        "accuracy_ci": _rounded(np.percentile(accuracy, tails)),
        "macro_f1_ci": _rounded(np.percentile(macro_f1, tails)),
        "ci": {"level": level, "method": "percentile bootstrap over test clips", "resamples": resamples,
               "seed": seed},
    }


def fold_intervals(accuracies, macro_f1s, *, level: float = LEVEL) -> dict:
    """t-intervals of the mean of per-fold accuracy and macro-F1, clipped to [0, 1]."""
    from scipy.stats import t as student_t

    k = len(accuracies)
    if k < 2:
        raise ValueError("an interval over folds needs at least two folds")
    half_width = student_t.ppf((1 + level) / 2, k - 1) / np.sqrt(k)

    def interval(values):
        values = np.asarray(values, dtype=np.float64)
        mean, spread = values.mean(), values.std(ddof=1) * half_width
        return _rounded(np.clip([mean - spread, mean + spread], 0.0, 1.0))

    return {"accuracy_ci": interval(accuracies), "macro_f1_ci": interval(macro_f1s),
            "ci": {"level": level, "method": f"t-interval of the mean over {k} folds"}}


def _rounded(pair) -> list[float]:
    # Six decimals: far below the bootstrap's own noise, and results.json stays readable.
    return [round(float(v), 6) for v in pair]
