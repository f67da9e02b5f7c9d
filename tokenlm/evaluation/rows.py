"""The rows of the probe table (results.json): a representation's probe scores and costs.

Every row is scored by the same linear probe (``tokenlm.evaluation.linear_probe``) on the
run's split and, when the dataset has official folds, by cross-validation over them.
``settings`` below is any config with the probe's settings: ``cs``, ``max_iter``, ``seed``
and ``folds`` (the probe's config, or the baselines' for the SimCLR row), and for sequence
representations ``pooling`` ("auto": each pooling is probed, the best on val is kept).
"""

from __future__ import annotations

import numpy as np

from tokenlm.core.errors import ArtifactError, TokenlmError
from tokenlm.evaluation.clips import LabelledClips
from tokenlm.evaluation.linear_probe import cross_validate_folds, fit_linear_probe
from tokenlm.evaluation.pooling import pool, pooling_candidates
from tokenlm.evaluation.representations import Representation
from tokenlm.run.rundir import SPLITS

LINEAR = "linear probe"  # a row's "kind": frozen features read by the linear probe
SUPERVISED = "supervised end-to-end"  # a row's "kind": a network's own classifier


def probe_vectors(vectors: np.ndarray, clips: LabelledClips, settings) -> dict:
    """The linear probe on per-clip ``vectors``: split result and, with folds, the fold CV."""
    test = None
    if len(clips.index("test")):
        test = fit_linear_probe(*(clips.xy(vectors, s) for s in SPLITS), Cs=settings.cs, seed=settings.seed,
                                max_iter=settings.max_iter).to_dict()
    folds = None
    if settings.folds and clips.has_folds:
        folds = cross_validate_folds(vectors, clips.labels, clips.folds, Cs=settings.cs, seed=settings.seed,
                                     max_iter=settings.max_iter).to_dict()
    if test is None and folds is None:
        raise ArtifactError("the run has no test clip and no official folds: nothing to report")
    return {"dim": int(vectors.shape[1]), "test": test, "folds": folds}


def fit_seconds(scores: dict) -> float:
    """Time the probe spent fitting, split and folds together."""
    return (scores["test"] or {}).get("fit_seconds", 0.0) + (scores["folds"] or {}).get("fit_seconds", 0.0)


def representation_row(rep: Representation, clips: LabelledClips, settings,
                       poolings: tuple[str, ...] | None = None) -> dict:
    """A results row for a representation: the probe's scores and the encoder's costs.

    A sequence representation is probed once per pooling of ``poolings`` (default: as
    ``settings.pooling`` says) and the row keeps the best on val (ties: the first, its
    customary pooling); ``pooling`` and ``pooling_val_accuracy`` record the choice.
    """
    try:
        if not rep.statistics:
            scores, choice = probe_vectors(rep.vectors, clips, settings), {}
        else:
            scores, choice = _best_pooling(rep, clips, settings, poolings)
    except ValueError as err:  # e.g. a single class in train: the user's data, not a bug
        raise TokenlmError(f"{rep.title}: {err}") from None
    title = f"{rep.title}, {choice['pooling']}" if choice else rep.title
    return {
        "name": rep.name, "title": title, "kind": LINEAR, "status": "ok", **scores, **choice,
        "encoder_params": rep.encoder_params, "flops_per_second": rep.flops_per_second,
        "encoder_train_s": rep.encoder_train_s, "probe_fit_s": round(fit_seconds(scores), 3),
        "extract_s": round(rep.extract_s, 3), "notes": rep.notes,
    }


def _best_pooling(rep: Representation, clips: LabelledClips, settings, poolings) -> tuple[dict, dict]:
    """Probe every candidate pooling of ``rep``; the scores of the best on val, and the choice."""
    candidates = poolings or pooling_candidates(settings.pooling, rep.pooling)
    tried = {p: probe_vectors(pool(rep.statistics, p), clips, settings) for p in candidates}
    val = {p: selection_score(scores) for p, scores in tried.items()}
    best = max(candidates, key=val.get)  # max keeps the first of equals: the customary pooling
    return tried[best], {"pooling": best, "pooling_val_accuracy": val}


def skipped_row(name: str, title: str, reason: str) -> dict:
    return {"name": name, "title": title, "status": "skipped", "reason": reason}


def baseline_row(results: dict) -> dict:
    """A baseline's results.json as a table row (its training history stays in its folder)."""
    return {k: v for k, v in results.items() if k != "history"}


def selection_score(row: dict) -> float:
    """Val accuracy a row is chosen by (folds: mean over folds)."""
    if row.get("folds") and row["folds"].get("val_accuracy_mean") is not None:
        return row["folds"]["val_accuracy_mean"]
    return (row.get("test") or {}).get("val_accuracy") or 0.0


def headline(row: dict):
    """A row's accuracy in one number (folds: the mean), or "skipped"."""
    if row.get("status") != "ok":
        return "skipped"
    return (row.get("folds") or {}).get("accuracy_mean", (row.get("test") or {}).get("accuracy"))
