"""The codebook-size sweep on a tiny trained run: every K measured, outputs written, cached."""

import csv
import json
import shutil

import pytest

from tokenlm.pipeline.sweep import NO_STEADY_GAIN, STILL_IMPROVING, SweepConfig, flattening_k, sweep
from tokenlm.run.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def swept(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("sweep") / "run"
    shutil.copytree(tiny_run, run)
    sweep(run, SweepConfig(codebook_sizes=(4, 8, 16)), device="cpu", progress=False)
    return run


def test_every_size_gets_a_codebook_tokens_and_a_row(swept):
    with open(swept / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["k"]) for r in rows] == [4, 8, 16]
    for k in (4, 8, 16):
        assert (RunDir(swept).codebook(k) / "codebook.npy").is_file()
        assert (RunDir(swept).tokens(k) / "train.bin").is_file()
    for r in rows:
        assert 0 < float(r["relative_quantisation_error"]) < 1
        assert 0 <= float(r["pnmi"]) <= 1 and 0 < float(r["purity"]) <= 1
        assert int(r["used_codes"]) <= int(r["k"])
    # More codes quantise the bottleneck more finely.
    errors = [float(r["relative_quantisation_error"]) for r in rows]
    assert errors[0] > errors[-1]


def test_outputs_are_written(swept):
    out = swept / "sweep"
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["rows"]) == 3 and "returns_flatten_at" in data
    for figure in ("distortion", "usage", "labels"):
        assert (out / f"{figure}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| 16 |" in report and "Where returns flatten" in report


def test_rerun_reuses_every_codebook(swept, capsys):
    before = {k: (RunDir(swept).codebook(k) / "stage.json").stat().st_mtime_ns for k in (4, 8, 16)}
    sweep(swept, SweepConfig(codebook_sizes=(4, 8, 16)), device="cpu", progress=False)
    after = {k: (RunDir(swept).codebook(k) / "stage.json").stat().st_mtime_ns for k in (4, 8, 16)}
    assert before == after
    err = capsys.readouterr().err
    assert "codebook K=8 up to date" in err
    assert "-- K=8 (2/3)" in err and "K=8: done (2/3)" in err  # a line per K, plain for logs


def test_lm_and_probe_columns_per_size(swept, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "lm: {n_layer: 1, n_head: 2, n_embd: 16, context: 32,\n"
        "     training: {steps: 50, batch_size: 4, warmup_steps: 1, eval_every: 5, log_every: 5}}\n"
        "probe: {max_iter: 200}\n")
    sweep(swept, SweepConfig(codebook_sizes=(4, 8), with_lm=True, with_probe=True, lm_steps=4),
          recipe=recipe, device="cpu", progress=False)
    rows = json.loads((swept / "sweep" / "sweep.json").read_text())["rows"]
    for row in rows:
        assert row["lm_val_perplexity"] > 1 and row["lm_bits_per_second"] > 0
        assert 0 <= row["probe_lm_accuracy"] <= 1 and 0 <= row["probe_bag_accuracy"] <= 1
        # Each probe accuracy carries its 95% interval, and the LM row the pooling chosen on val.
        assert row["probe_lm_accuracy_ci_lo"] <= row["probe_lm_accuracy"] <= row["probe_lm_accuracy_ci_hi"]
        assert row["probe_bag_accuracy_ci_lo"] <= row["probe_bag_accuracy"] <= row["probe_bag_accuracy_ci_hi"]
        assert row["probe_lm_pooling"] in ("mean", "mean+std", "mean+max")
        lm = swept / "sweep_k" / f"k{row['k']}" / "lm"
        assert json.loads((lm / "metrics.json").read_text())["steps"] == 4  # the sweep's cap applies
    assert (swept / "sweep" / "lm.png").is_file() and (swept / "sweep" / "probe.png").is_file()
    assert "95% interval" in (swept / "sweep" / "report.md").read_text()


def test_flattening_is_where_the_gain_per_doubling_drops():
    rows = [{"k": 8, "e": 10.0}, {"k": 16, "e": 6.0}, {"k": 32, "e": 5.0}, {"k": 64, "e": 4.9}]
    # Gains per doubling: 4, 1, 0.1; a quarter of the first gain is 1 -> flat from K=32.
    assert flattening_k(rows, "e", higher_is_better=False, fraction=0.25) == 32
    steady = [{"k": 8, "e": 3.0}, {"k": 16, "e": 2.0}, {"k": 32, "e": 1.0}]
    assert flattening_k(steady, "e", higher_is_better=False, fraction=0.25) == STILL_IMPROVING
    assert flattening_k(steady, "e", higher_is_better=True, fraction=0.25) == NO_STEADY_GAIN
