"""The linear probe: one classifier, the same code for every representation.

A representation is judged by how well a *linear* classifier reads the label out of it:
features are standardised with statistics of the train split, a multinomial logistic
regression (L2, lbfgs) is fitted on train for each regularisation strength ``C``, the ``C``
with the best validation accuracy is kept, and the test split is scored once with it.

Datasets with official folds (ESC-50: 5, UrbanSound8K: 10) are also scored the way their
papers do: every fold is the test set once, the fold before it (cyclically) picks ``C``,
the others train; the result is the mean and spread over folds.

Every test score carries a 95% interval (``tokenlm.evaluation.intervals``): a bootstrap over
test clips for a split, a t-interval of the mean for folds.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from tokenlm.evaluation.intervals import bootstrap_intervals, fold_intervals

__all__ = [
    "DEFAULT_CS",
    "ProbeResult",
    "FoldResult",
    "fit_linear_probe",
    "cross_validate_folds",
    "fold_assignments",
    "summarise_folds",
]

# Inverse regularisation strengths tried on val: strong (1e-3) to almost none (1e2).
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class ProbeResult:
    """Test-set scores of one probe, with the choices made on val."""

    accuracy: float
    macro_f1: float
    best_C: float
    val_accuracy: float | None  # None when there was no val split to choose C on
    dim: int
    fit_seconds: float
    n_train: int
    n_val: int
    n_test: int
    accuracy_ci: list[float] = field(default_factory=list)  # [lo, hi], 95%: bootstrap over test clips
    macro_f1_ci: list[float] = field(default_factory=list)
    ci: dict = field(default_factory=dict)  # how the intervals were computed (level, resamples, seed)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FoldResult:
    """Mean and spread (population std) of a probe over official folds, with a 95% t-interval
    of the mean; ``per_fold`` keeps each fold's result."""

    accuracy_mean: float
    accuracy_std: float
    macro_f1_mean: float
    macro_f1_std: float
    val_accuracy_mean: float | None
    fit_seconds: float
    per_fold: list[dict] = field(default_factory=list)
    accuracy_ci: list[float] = field(default_factory=list)  # [lo, hi] of the mean over folds
    macro_f1_ci: list[float] = field(default_factory=list)
    ci: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    Cs: tuple[float, ...] = DEFAULT_CS,
    seed: int = 0,
    max_iter: int = 2000,
) -> ProbeResult:
    """Fit on ``train``, choose ``C`` on ``val``, score ``test`` once.

    Each split is ``(X (N, D), y (N,))``; labels may be any hashable values (strings, ints).
    A test label never seen in train simply counts as an error. With an empty val split,
    ``C`` is not tuned: the middle value of ``Cs`` is used and ``val_accuracy`` is None.
    """
    # Imported before the thread limit below: threadpoolctl only limits libraries already loaded.
    from sklearn.linear_model import LogisticRegression  # noqa: F401
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x_train, y_train = _checked(train, "train")
    x_val, y_val = _checked(val, "val", dim=x_train.shape[1])
    x_test, y_test = _checked(test, "test", dim=x_train.shape[1])
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("the linear probe needs at least one train and one test example")
    if len(set(y_train.tolist())) < 2:
        raise ValueError("the linear probe needs at least two classes in train")

    start = time.perf_counter()
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    x_val = scaler.transform(x_val) if len(x_val) else x_val

    # One BLAS thread: these problems are small, a multi-threaded BLAS on a busy CPU was measured
    # 10x slower, and thread-dependent rounding could change which C wins (results must repeat).
    with threadpool_limits(limits=1):
        if len(x_val):
            model, best_C, val_accuracy = _choose_C(x_train, y_train, x_val, y_val, Cs, seed, max_iter)
        else:
            best_C, val_accuracy = float(sorted(Cs)[len(Cs) // 2]), None
            model = _fit(_classifier(best_C, seed, max_iter), x_train, y_train)
        predicted = model.predict(x_test)
    return ProbeResult(
        accuracy=float(accuracy_score(y_test, predicted)),
        macro_f1=float(f1_score(y_test, predicted, average="macro", zero_division=0)),
        best_C=float(best_C),
        val_accuracy=val_accuracy,
        dim=int(x_train.shape[1]),
        fit_seconds=round(time.perf_counter() - start, 4),
        n_train=len(x_train),
        n_val=len(x_val),
        n_test=len(x_test),
        **bootstrap_intervals(y_test, predicted, seed=seed),
    )


def fold_assignments(folds: list) -> list[tuple[object, object]]:
    """(test fold, val fold) pairs: each fold is test once, the one before it (cyclically) is val."""
    order = sorted(set(folds), key=lambda f: (str(type(f)), f))
    if len(order) < 3:
        raise ValueError(f"cross-validation over folds needs at least 3 folds, got {len(order)}")
    return [(fold, order[i - 1]) for i, fold in enumerate(order)]


def cross_validate_folds(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    Cs: tuple[float, ...] = DEFAULT_CS,
    seed: int = 0,
    max_iter: int = 2000,
) -> FoldResult:
    """The linear probe over official folds (see :func:`fold_assignments`): mean ± std."""
    X, y, folds = np.asarray(X), np.asarray(y), np.asarray(folds)
    per_fold = []
    for test_fold, val_fold in fold_assignments(folds.tolist()):
        is_test, is_val = folds == test_fold, folds == val_fold
        is_train = ~(is_test | is_val)
        result = fit_linear_probe(
            (X[is_train], y[is_train]), (X[is_val], y[is_val]), (X[is_test], y[is_test]), Cs, seed, max_iter
        )
        per_fold.append({"test_fold": test_fold, "val_fold": val_fold, **result.to_dict()})
    return summarise_folds(per_fold)


def summarise_folds(per_fold: list[dict]) -> FoldResult:
    """Mean, (population) std and t-interval of the mean of per-fold results that carry
    accuracy/macro_f1/val_accuracy."""
    acc = np.array([r["accuracy"] for r in per_fold])
    f1 = np.array([r["macro_f1"] for r in per_fold])
    vals = [r["val_accuracy"] for r in per_fold if r.get("val_accuracy") is not None]
    return FoldResult(
        accuracy_mean=float(acc.mean()),
        accuracy_std=float(acc.std()),
        macro_f1_mean=float(f1.mean()),
        macro_f1_std=float(f1.std()),
        val_accuracy_mean=float(np.mean(vals)) if vals else None,
        fit_seconds=round(float(sum(r.get("fit_seconds", 0.0) for r in per_fold)), 4),
        per_fold=per_fold,
        **fold_intervals(acc, f1),
    )


# ---- helpers ------------------------------------------------------------------------


def _classifier(C: float, seed: int, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    # lbfgs optimises the multinomial (softmax) loss whenever there are 3+ classes.
    return LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed)


def _fit(model, x, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Nearly unregularised fits on separable data never "converge"; the val score
        # decides whether that C is any good, so the warning is noise here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def _choose_C(x_train, y_train, x_val, y_val, Cs, seed, max_iter):
    """Fit one model per C (strongest regularisation first); keep the best on val.

    Ties go to the stronger regularisation, the safer bet on small data.
    """
    best = (None, None, -1.0)
    model = _classifier(min(Cs), seed, max_iter)
    model.set_params(warm_start=True)  # each C starts from the previous solution: far fewer steps
    for C in sorted(Cs):
        _fit(model.set_params(C=C), x_train, y_train)
        accuracy = float(np.mean(model.predict(x_val) == y_val))
        if accuracy > best[2]:
            best = (copy.deepcopy(model), C, accuracy)
    return best


def _checked(split, name: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X float64 (N, D), y (N,)) with shapes and finiteness checked; a clear error otherwise."""
    x, y = split
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2:
        if x.size == 0:
            x = x.reshape(0, dim or 0)
        else:
            raise ValueError(f"{name} features must be 2-D (N, D), got shape {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} feature rows but {len(y)} labels")
    if dim is not None and len(x) and x.shape[1] != dim:
        raise ValueError(f"{name} features have dimension {x.shape[1]}, train has {dim}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} features contain NaN or inf")
    return x, y
