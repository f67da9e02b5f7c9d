"""Every labelled clip of a run's features, with its split, label and official fold.

The probe and the baselines read clips through one ``LabelledClips``, so every row of the
table sees the same clips in the same order, and the split checks are made once.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import read_jsonl
from tokenlm.data.store import RaggedSplit, index_file
from tokenlm.run.rundir import SPLITS, RunDir, as_run, is_finished, read_feature_meta


class LabelledClips:
    """Every labelled clip of a run's features, in split order, with its split/label/fold.

    Raises ArtifactError if the run has no features yet, if a clip id is in two splits, or if
    the manifest puts a clip in a different split than the features do: a probe over mixed
    splits would be meaningless.
    """

    def __init__(self, run: str | Path | RunDir):
        self.run = as_run(run)
        if not is_finished(self.run.features):
            raise ArtifactError(f"{self.run.root} has no features: run `tokenlm prepare --data DIR --out "
                                f"{self.run.root}` first")
        self.feature_meta = read_feature_meta(self.run.features)
        self.n_mels = self.feature_meta.config.n_mels
        self.frame_rate = self.feature_meta.config.frame_rate
        self.norm_mean = self.feature_meta.norm_mean  # (M,)
        self.norm_std = self.feature_meta.norm_std  # (M,)
        self._stores: dict[str, RaggedSplit] = {}
        refs, ids, splits, labels, folds = [], [], [], [], []
        for split in SPLITS:
            if not (self.run.features / index_file(split)).is_file():
                continue
            store = RaggedSplit(self.run.features, split, "float16", width=self.n_mels)
            self._stores[split] = store
            for i, row in enumerate(store.rows):
                if row.get("label") is None:
                    continue  # unlabelled clips cannot be probed
                refs.append((split, i))
                ids.append(str(row["id"]))
                splits.append(split)
                labels.append(str(row["label"]))
                folds.append(row.get("fold"))
        self._refs = refs
        self.ids = ids
        self.splits = np.array(splits)
        self.labels = np.array(labels)
        self._check_disjoint()
        self.folds = self._folds(folds)
        self.classes = sorted(set(labels))
        if not ids:
            raise ArtifactError(f"{self.run.features} has no labelled clip: nothing to probe")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, split: str) -> np.ndarray:
        """Positions of the clips of ``split``."""
        return np.flatnonzero(self.splits == split)

    def logmel(self, i: int) -> np.ndarray:
        """Clip i's log-mel in dB, (T, M) float16 (a memmap view)."""
        split, row = self._refs[i]
        return self._stores[split][row]

    @cached_property
    def normalised(self) -> list[np.ndarray]:
        """Every clip's log-mel normalised with the train statistics, (T, M) float16 each."""
        return [((self.logmel(i).astype(np.float32) - self.norm_mean) / self.norm_std).astype(np.float16)
                for i in range(len(self))]

    @property
    def has_folds(self) -> bool:
        return self.folds is not None

    def xy(self, vectors: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of one split out of per-clip ``vectors`` (N, D)."""
        idx = self.index(split)
        return vectors[idx], self.labels[idx]

    def summary(self) -> dict:
        """The dataset part of the probe's results.json."""
        counts = {s: int((self.splits == s).sum()) for s in SPLITS}
        test = self.labels[self.index("test")]
        majority = max((np.mean(test == c) for c in self.classes), default=0.0) if len(test) else None
        return {
            "clips": counts,
            "classes": self.classes,
            "folds": sorted(set(self.folds.tolist())) if self.has_folds else None,
            "majority_class_test_accuracy": None if majority is None else float(majority),
        }

    def _check_disjoint(self) -> None:
        seen: dict[str, str] = {}
        for clip_id, split in zip(self.ids, self.splits):
            if seen.setdefault(clip_id, split) != split:
                raise ArtifactError(f"clip {clip_id} is in both the {seen[clip_id]} and the {split} split of "
                                    f"{self.run.features}: rebuild the features (`tokenlm prepare`)")
        for row in self._manifest():
            split = seen.get(str(row.get("id")))
            if split is not None and row.get("split") not in (None, split):
                raise ArtifactError(f"clip {row['id']} is in the {row['split']} split of {self.run.manifest} but "
                                    f"in {split} in {self.run.features}: the features are out of date")

    def _folds(self, folds: list):
        """Official folds, when every clip has one (from the features index or the manifest)."""
        if any(f is None for f in folds):
            by_id = {str(r["id"]): r.get("fold") for r in self._manifest()}
            folds = [f if f is not None else by_id.get(i) for f, i in zip(folds, self.ids)]
        if not folds or any(f is None for f in folds) or len(set(folds)) < 3:
            return None
        return np.array(folds)

    def _manifest(self) -> list[dict]:
        """The run's manifest rows; none when the features were built without one."""
        return read_jsonl(self.run.manifest) if self.run.manifest.is_file() else []
