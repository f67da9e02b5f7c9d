"""The run-level half of tokenlm.data.input_content: a run's pinned input hashes
(RUN/input_hashes.json) and whether a clip, featurised again now, gives the features the run
stored for it."""

from __future__ import annotations

import numpy as np

from tokenlm.core.errors import AudioError, TokenlmError
from tokenlm.data.audio import row_source
from tokenlm.data.features import LogMel, file_log_mel
from tokenlm.data.input_content import InputHashes
from tokenlm.data.store import RaggedSplit
from tokenlm.run.rundir import RunDir, as_run, read_feature_meta

# Stored features are float16: a clip featurised again agrees within its rounding.
FEATURE_RTOL, FEATURE_ATOL = 1e-3, 1e-2


def run_input_hashes(run: str | RunDir) -> InputHashes:
    """The content checks of ``run``: its pinned hashes, then its stored features."""
    run = as_run(run)
    return InputHashes(run.input_hashes, lambda row: features_match(run, row))


def features_match(run: RunDir, row: dict) -> bool:
    """Whether the clip of ``row``, featurised now, gives the features prepare stored for it."""
    try:
        meta = read_feature_meta(run.features)
        split = RaggedSplit(run.features, row["split"], "float16", width=meta.config.n_mels)
        index = next((i for i, r in enumerate(split.rows) if r["id"] == row["id"]), None)
        if index is None:
            return False
        frames, _ = file_log_mel(row_source(row), LogMel(meta.config), min_samples=meta.config.n_fft)
    except (AudioError, TokenlmError, OSError, KeyError):
        return False
    stored = np.asarray(split[index], dtype=np.float32)
    now = frames.astype(np.float16).astype(np.float32)
    return now.shape == stored.shape and bool(np.allclose(now, stored, rtol=FEATURE_RTOL, atol=FEATURE_ATOL))
