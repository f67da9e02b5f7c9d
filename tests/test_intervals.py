"""95% intervals: certain at 100%, chance inside the interval of noise, reproducible, in the table."""

from __future__ import annotations

import numpy as np
import pytest

from tokenlm.evaluation.intervals import bootstrap_intervals, fold_intervals
from tokenlm.evaluation.linear_probe import cross_validate_folds, fit_linear_probe
from tokenlm.evaluation.pooling import pool, pooling_candidates, time_statistics
from tokenlm.evaluation.probe_table import render_report


def _one_hot_split(rng, n: int, classes: int, shuffled: bool = False):
    """(train, val, test) with the label itself (one-hot) as the features; ``shuffled``: the
    labels are permuted afterwards, so the features say nothing about them."""
    y = rng.integers(0, classes, size=n)
    x = np.eye(classes)[y] + 0.01 * rng.standard_normal((n, classes))
    if shuffled:
        y = rng.permutation(y)
    third = n // 3
    return (x[:third], y[:third]), (x[third:2 * third], y[third:2 * third]), (x[2 * third:], y[2 * third:])


def test_the_label_itself_probes_with_an_interval_at_100_percent():
    result = fit_linear_probe(*_one_hot_split(np.random.default_rng(0), 150, 4))
    assert result.accuracy == 1.0
    assert result.accuracy_ci == [1.0, 1.0] and result.macro_f1_ci == [1.0, 1.0]
    assert result.ci["level"] == 0.95 and result.ci["resamples"] > 0


def test_a_shuffled_label_gets_an_interval_containing_chance():
    classes = 4
    result = fit_linear_probe(*_one_hot_split(np.random.default_rng(1), 900, classes, shuffled=True))
    low, high = result.accuracy_ci
    assert low < 1 / classes < high
    assert low <= result.accuracy <= high and high - low < 0.2


def test_the_bootstrap_repeats_with_its_seed():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 5, 300)
    predicted = np.where(rng.random(300) < 0.6, truth, rng.integers(0, 5, 300))
    first = bootstrap_intervals(truth, predicted, seed=7)
    assert bootstrap_intervals(truth, predicted, seed=7) == first
    assert bootstrap_intervals(truth, predicted, seed=8)["accuracy_ci"] != first["accuracy_ci"]
    # Any label type: strings give the same intervals as the integers they stand for.
    names = np.array(["a", "b", "c", "d", "e"])
    assert bootstrap_intervals(names[truth], names[predicted], seed=7) == first


def test_folds_get_a_t_interval_of_their_mean():
    same = fold_intervals([0.8] * 5, [0.7] * 5)
    assert same["accuracy_ci"] == [0.8, 0.8] and same["macro_f1_ci"] == [0.7, 0.7]
    spread = fold_intervals([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    # mean 0.7, sample std 0.1, t(0.975, 2) = 4.303: 0.7 ± 0.248
    assert spread["accuracy_ci"] == pytest.approx([0.4516, 0.9484], abs=1e-3)
    assert fold_intervals([0.9, 1.0, 1.0], [0.9, 1.0, 1.0])["accuracy_ci"][1] == 1.0  # clipped
    rng = np.random.default_rng(3)
    folds = np.repeat([1, 2, 3], 30)
    y = rng.integers(0, 3, size=90)
    result = cross_validate_folds(np.eye(3)[y], y, folds, Cs=(1.0,))
    assert result.accuracy_ci == [1.0, 1.0] and "t-interval" in result.ci["method"]


def test_poolings_come_from_one_set_of_statistics():
    x = np.array([[1.0, -2.0], [3.0, 0.0]])  # (T=2, D=2)
    stats = {k: v[None] for k, v in time_statistics(x).items()}  # one clip
    assert pool(stats, "mean").tolist() == [[2.0, -1.0]]
    assert pool(stats, "mean+std").tolist() == [[2.0, -1.0, 1.0, 1.0]]
    assert pool(stats, "mean+max").tolist() == [[2.0, -1.0, 3.0, 0.0]]
    assert time_statistics(np.zeros((0, 3)))["max"].tolist() == [0.0, 0.0, 0.0]  # an empty clip
    assert pooling_candidates("auto", "mean+std") == ("mean+std", "mean", "mean+max")
    assert pooling_candidates("mean+max", "mean") == ("mean+max",)
    with pytest.raises(ValueError, match="pooling"):
        pooling_candidates("median", "mean")


def _results(rows, folds=None) -> dict:
    return {"run": "runs/x", "config": {}, "rows": rows,
            "dataset": {"clips": {"train": 10, "val": 5, "test": 40}, "classes": ["a", "b"], "folds": folds,
                        "majority_class_test_accuracy": 0.5}}


def test_the_probe_table_shows_intervals():
    test = {"accuracy": 0.625, "macro_f1": 0.6, "accuracy_ci": [0.571, 0.679], "macro_f1_ci": [0.5, 0.7]}
    row = {"name": "logmel_stats", "title": "log-mel", "kind": "linear probe", "status": "ok", "dim": 4,
           "test": test, "folds": None}
    old = {**row, "name": "old", "title": "old row", "test": {"accuracy": 0.5, "macro_f1": 0.5}}
    report = render_report(_results([row, old]))
    assert "| 62.5% [57.1, 67.9] | 60.0% [50.0, 70.0] |" in report
    assert "| 50.0% | 50.0% |" in report  # a row from before intervals: the value alone
    folds = {"accuracy_mean": 0.7, "accuracy_std": 0.05, "macro_f1_mean": 0.6, "macro_f1_std": 0.1,
             "accuracy_ci": [0.6, 0.8], "macro_f1_ci": [0.45, 0.75]}
    report = render_report(_results([{**row, "folds": folds}], folds=[1, 2, 3]))
    assert "70.0% ± 5.0 [60.0, 80.0]" in report and "62.5% [57.1, 67.9]" in report
