"""Issue 23, case 1: a command that waited for the run's lock builds on the inputs that are
there once it holds the lock, and records their keys, never the keys it read before waiting.

The race is driven by events, not timing: a holder process takes the run's lock and waits for
a line on its stdin; the waiting command is started and we read its stderr until it says it
is waiting; only then is the holder told to rebuild the input stage and let go.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tokenlm
from tokenlm.core.fileio import read_json
from tokenlm.run.artifacts import STAGE_FILE, Stage, stage_key

CODE_ROOT = Path(tokenlm.__file__).resolve().parents[1]  # the tokenlm under test, for the subprocesses

HOLDER = r"""
import sys
from tokenlm.run import lock as runlock
from tokenlm.data.features import FeatureConfig
from tokenlm.pipeline.prepare import prepare

corpus, run = sys.argv[1], sys.argv[2]
runlock.acquire(run)
print("holding", flush=True)
sys.stdin.readline()  # "go": the other command is waiting now
prepare(corpus, run, FeatureConfig(f_min=2000.0), progress=False)
runlock.release(run)
"""

AUTOENCODER = r"""
import sys, torch
torch.set_num_threads(1)
from tokenlm.models.autoencoder import AutoencoderConfig
from tokenlm.pipeline.tokenize import train_autoencoder_stage
from tokenlm.tokenizer.tokenizer import AutoencoderTraining

train_autoencoder_stage(sys.argv[1], AutoencoderConfig(hidden=(16, 8), bottleneck=4),
                        AutoencoderTraining(epochs=1, batch_size=64), device=torch.device("cpu"), progress=False)
"""


def _python(code: str, *args, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(CODE_ROOT), "TOKENLM_LOCK_WAIT": "300"}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True, **popen)


def _wait_until_it_waits(process: subprocess.Popen) -> str:
    """Read the process's stderr up to its line saying it waits for the lock."""
    seen = ""
    for line in process.stderr:
        seen += line
        if "waiting up to" in line:
            return seen
    raise AssertionError(f"it never waited for the lock:\n{seen}")


def test_a_command_that_waited_while_its_input_was_rebuilt_records_the_input_it_built_on(make_corpus, tmp_path):
    from tokenlm.pipeline.prepare import prepare

    corpus = make_corpus(clips=2, seconds=0.5)
    run = tmp_path / "run"
    prepare(corpus, run, progress=False)
    old_key = stage_key(run / "features")

    holder = _python(HOLDER, corpus, run, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
        waiter = _python(AUTOENCODER, run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_until_it_waits(waiter)  # it has read the features' key: now rebuild them under it
        holder.stdin.write("go\n")
        holder.stdin.close()
        assert holder.wait(timeout=300) == 0, holder.stderr.read()
        rest = waiter.stderr.read()
        assert waiter.wait(timeout=300) == 0, rest
    finally:
        for process in (holder, waiter):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    new_key = stage_key(run / "features")
    assert new_key != old_key  # the features were rebuilt while the autoencoder waited
    record = read_json(run / "tokenizer" / STAGE_FILE)
    assert record["inputs"]["features"] == new_key
    trained_on = read_json(run / "tokenizer" / "config.json")
    assert trained_on["features"]["f_min"] == 2000.0  # and it was trained on the new features
    assert "features changed while this command waited" in rest


def test_a_stage_whose_input_changed_before_the_lock_is_keyed_by_the_input_it_holds(tmp_path):
    """The same, in-process and without waiting: the key read at construction is replaced by
    the one read under the lock (what ``build`` passes to ``make``)."""
    run = tmp_path / "run"
    Stage(run / "features", config={"v": 1}).build("features", lambda work: (work / "x").write_text("1") and None)
    stage = Stage(run / "tokenizer", config={}, inputs={"features": run / "features"})
    before = stage.key
    Stage(run / "features", config={"v": 2}).build("features", lambda work: (work / "x").write_text("2") and None)
    seen = []
    stage.build("tokenizer", lambda work: seen.append((run / "features" / "x").read_text()))
    record = read_json(run / "tokenizer" / STAGE_FILE)
    assert seen == ["2"] and record["inputs"]["features"] == stage_key(run / "features")
    assert record["key"] != before and Stage(run / "tokenizer", config={}, inputs={"features": run / "features"}).done


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
