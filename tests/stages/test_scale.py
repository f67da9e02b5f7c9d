"""The data-scaling study: nested corpus subsets, a run per size, every task probed per size,
the table, the figure and the report."""

from __future__ import annotations

import csv

import pytest
import yaml

from tests.conftest import run_cli, write_corpus
from tests.test_end_to_end import TINY
from tokenlm.core.errors import ConfigError
from tokenlm.core.fileio import read_json, read_jsonl
from tokenlm.pipeline.scale import ScaleConfig, nested_subsets
from tokenlm.run.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _manifest(n: int) -> list[dict]:
    splits = ["train", "train", "val", "test"]
    return [{"id": f"c{i}", "path": f"/x/c{i}.wav", "status": "ok", "split": splits[i % 4], "duration": 60.0}
            for i in range(n)] + [{"id": "bad", "path": "/x/bad.wav", "status": "skipped", "split": "train",
                                   "duration": None}]


def test_subsets_are_nested_hold_the_hours_and_never_a_test_clip():
    subsets = nested_subsets(_manifest(40), (0.05, 0.1, 0.2, 5.0), seed=3)
    ids = {h: [r["id"] for r in rows] for h, rows in subsets.items()}
    assert ids[0.05] == ids[0.1][:len(ids[0.05])] and ids[0.1] == ids[0.2][:len(ids[0.1])]
    for hours, rows in subsets.items():
        train_minutes = sum(r["duration"] for r in rows if r["split"] == "train") / 60
        assert train_minutes >= min(hours * 60, 20) and all(r["split"] != "test" and r["status"] == "ok" for r in rows)
        assert rows[-1]["split"] == "train" or hours == 5.0  # the shortest prefix reaching the size
    assert len(subsets[5.0]) == 30  # the whole pool: 20 train + 10 val clips
    assert nested_subsets(_manifest(40), (0.1,), seed=4)[0.1] != subsets[0.1]  # the seed orders them
    with pytest.raises(ValueError, match="positive"):
        ScaleConfig(hours=(0.0, 1.0))
    with pytest.raises(ConfigError, match="no usable train clip"):
        nested_subsets([r for r in _manifest(8) if r["split"] != "train"], (1.0,), 0)


def test_scale_study_end_to_end(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", "unlabelled", labels=3, groups=3, clips=2, seconds=0.7,
                          sample_rate=8000)
    task = write_corpus(tmp_path / "notes", labels=2, groups=3, clips=2, seconds=0.5, sample_rate=8000)
    recipe = tmp_path / "scale.yaml"
    recipe.write_text(yaml.safe_dump({
        "run": {"dir": str(tmp_path / "run"), "device": "cpu"},
        "pretrain": {"path": str(corpus)}, "tasks": {"notes": str(task)},
        **TINY, "probe": {**TINY["probe"], "baselines": ["timbre"]},
        "scale": {"hours": [0.0015, 0.003]},
        "levers": {"multi": {"objective": "multi", "predict_ahead": 2}},
    }))
    assert run_cli("scale", recipe, "--no-progress") == 0
    run = RunDir(tmp_path / "run")
    small, large = (read_jsonl(run.scale_point(h).root / "corpus.jsonl") for h in (0.0015, 0.003))
    assert small == large[:len(small)] and len(small) < len(large)
    assert {r["split"] for r in large} <= {"train", "val"}
    # Each size trains its own tokenizer and LM on its subset, and probes the task with them.
    assert len(read_jsonl(run.scale_point(0.0015).features / "manifest.jsonl")) == len(small)
    for hours in (0.0015, 0.003):
        rows = {r["name"] for r in read_json(run.scale_point(hours).probe_task("notes") / "results.json")["rows"]}
        assert {"lm_best", "autoencoder", "logmel_stats"} <= rows and "timbre" not in rows
    with open(run.scale / "scale.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {(r["hours"], r["representation"]) for r in table} >= {("0.0015", "lm_best"), ("0.003", "lm_best")}
    assert all(r["ci_lo"] != "" for r in table)
    record = read_json(run.scale / "scale.json")
    assert set(record["lines"]["notes"]) == {"timbre", "chance", "logmel_stats"}  # trained once, on the task
    assert (run.scale / "scale.png").is_file() and "## notes" in (run.scale / "report.md").read_text()
    assert run_cli("report", run.root) == 0 and "## Data scaling" in run.report.read_text()
    assert run_cli("scale", recipe, "--hours", "x") == 1  # one line: --hours takes a comma list
    assert not (run.scale_point(0.003).root / "levers").exists()  # levers only when asked for

    # Levers: the LM trained again on the largest size with other settings, probed the same way.
    stamp = (run.scale_point(0.003).lm / "stage.json").stat().st_mtime_ns
    assert run_cli("scale", recipe, "--with-levers", "--no-progress") == 0
    lever = run.scale_point(0.003).lever("multi")
    assert read_json(lever.lm / "metrics.json")["objective"] == "multi"
    assert (run.scale_point(0.003).lm / "stage.json").stat().st_mtime_ns == stamp  # the reference is reused
    assert read_json(run.scale / "scale.json")["levers"][0]["lever"] == "multi"
    assert "## Levers at 0.003 h" in (run.scale / "report.md").read_text()


def test_lm_steps_scale_with_the_corpus_at_a_fixed_number_of_passes(tmp_path):
    from stages.test_pretrain import make_token_run  # 60 train clips of known lengths

    from tokenlm.pipeline.scale import steps_for_passes

    run = RunDir(make_token_run(tmp_path / "run"))
    codes = sum(int(r["length"]) for r in read_jsonl(run.tokens() / "train.index.jsonl"))
    assert codes > 60 * 25
    assert steps_for_passes(3.0, run, context=32, batch_size=4) == -(-3 * codes // 128)
    assert steps_for_passes(1e-9, run, context=32, batch_size=4) == 1
    with pytest.raises(ValueError, match="lm_passes"):
        ScaleConfig(lm_passes=0)
