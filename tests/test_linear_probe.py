"""The linear probe itself: a label-carrying feature probes at 100%, noise at chance."""

from __future__ import annotations

import numpy as np
import pytest

from tokenlm.evaluation.linear_probe import cross_validate_folds, fit_linear_probe, fold_assignments


def _labels(n: int, classes: int, rng) -> np.ndarray:
    return np.array([f"class{c}" for c in rng.integers(0, classes, size=n)])


def _split(x, y, n_train, n_val):
    return (x[:n_train], y[:n_train]), (x[n_train : n_train + n_val], y[n_train : n_train + n_val]), (
        x[n_train + n_val :], y[n_train + n_val :])


def test_one_hot_label_column_probes_at_100_percent():
    rng = np.random.default_rng(0)
    y = _labels(300, 5, rng)
    classes = sorted(set(y))
    one_hot = (y[:, None] == np.array(classes)[None]).astype(float)  # (N, 5)
    x = np.concatenate([rng.standard_normal((300, 20)), one_hot], axis=1)
    result = fit_linear_probe(*_split(x, y, 200, 50))
    assert result.accuracy == 1.0 and result.macro_f1 == 1.0
    assert result.val_accuracy == 1.0
    assert (result.n_train, result.n_val, result.n_test, result.dim) == (200, 50, 50, 25)


def test_noise_probes_near_chance():
    rng = np.random.default_rng(1)
    y = _labels(1200, 4, rng)
    x = rng.standard_normal((1200, 16))
    result = fit_linear_probe(*_split(x, y, 600, 300))
    assert abs(result.accuracy - 0.25) < 0.08


def _two_blobs(n, rng, b_fraction=0.5):
    """Labels "a"/"b" (about ``b_fraction`` of "b") read off feature 0 (a: +2, b: -2), plus noise."""
    y = np.where(rng.random(n) < b_fraction, "b", "a")
    x = rng.standard_normal((n, 4))
    x[:, 0] += np.where(y == "a", 2.0, -2.0)
    return x, y


def test_C_is_chosen_on_val_and_test_never_takes_part():
    rng = np.random.default_rng(2)
    train = _two_blobs(200, rng, b_fraction=0.3)  # mostly "a"
    test = _two_blobs(100, rng)
    Cs = (1e-4, 100.0)  # 1e-4: every weight ~0, so the train majority "a" everywhere
    # A val split whose labels agree with the features: the weakly regularised fit wins.
    honest_val = _two_blobs(60, rng)
    honest = fit_linear_probe(train, honest_val, test, Cs=Cs)
    assert honest.best_C == 100.0 and honest.val_accuracy > 0.9 and honest.accuracy > 0.9
    # A val split of "b"-looking examples all labelled "a": only the majority guess gets them
    # right, so the strongly regularised fit wins, and test is scored with it.
    majority_val = (_two_blobs(60, rng, b_fraction=1.0)[0], np.full(60, "a"))
    majority = fit_linear_probe(train, majority_val, test, Cs=Cs)
    assert majority.best_C == 1e-4 and majority.val_accuracy == 1.0
    assert majority.accuracy == pytest.approx(np.mean(test[1] == "a"))
    # Test labels play no part in the choice: flipped, they flip the score and nothing else.
    flipped = (test[0], np.where(test[1] == "a", "b", "a"))
    for val, result in ((honest_val, honest), (majority_val, majority)):
        again = fit_linear_probe(train, val, flipped, Cs=Cs)
        assert (again.best_C, again.val_accuracy) == (result.best_C, result.val_accuracy)
        assert again.accuracy == pytest.approx(1 - result.accuracy)


def test_empty_val_uses_the_middle_C_and_unseen_test_labels_count_as_errors():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 4))
    y = np.array(["a", "b"] * 20)
    x[:, 0] += (y == "a") * 5
    test_x = np.concatenate([x[:4], x[:2]])
    test_y = np.array(["a", "b", "a", "b", "zebra", "zebra"])
    result = fit_linear_probe((x, y), (np.zeros((0, 4)), np.array([])), (test_x, test_y), Cs=(0.1, 1.0, 10.0))
    assert result.val_accuracy is None and result.best_C == 1.0
    assert result.accuracy == pytest.approx(4 / 6)


def test_bad_inputs_are_refused_with_a_reason():
    x, y = np.ones((10, 3)), np.array([0, 1] * 5)
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_probe((np.full((10, 3), np.nan), y), (x, y), (x, y))
    with pytest.raises(ValueError, match="dimension"):
        fit_linear_probe((x, y), (x, y), (np.ones((10, 4)), y))
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_probe((x, np.zeros(10)), (x, y), (x, y))


def test_fold_assignments_each_fold_is_test_once_with_the_previous_as_val():
    assert fold_assignments([3, 1, 2, 1, 5]) == [(1, 5), (2, 1), (3, 2), (5, 3)]
    with pytest.raises(ValueError):
        fold_assignments([1, 2, 1])


def test_cross_validation_over_folds_never_tests_on_train():
    rng = np.random.default_rng(4)
    folds = np.repeat([1, 2, 3, 4, 5], 30)
    y = rng.integers(0, 3, size=150)
    x = np.concatenate([rng.standard_normal((150, 6)), np.eye(3)[y]], axis=1)
    result = cross_validate_folds(x, y, folds, Cs=(1.0,))
    assert result.accuracy_mean == 1.0 and result.accuracy_std == 0.0
    assert [f["test_fold"] for f in result.per_fold] == [1, 2, 3, 4, 5]
    for fold in result.per_fold:
        assert (fold["n_train"], fold["n_val"], fold["n_test"]) == (90, 30, 30)
