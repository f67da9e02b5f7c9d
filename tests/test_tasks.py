"""Issue 10: pretraining on an unlabelled corpus apart from the labelled tasks. A tiny corpus and
two tiny tasks run end to end; the self-supervised stages never read a task's labels or audio
(checked through what the stages record); a task added later is probed without any
self-supervised stage running again."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, write_corpus
from tests.test_end_to_end import TINY
from tokenlm.core.errors import ConfigError
from tokenlm.core.fileio import read_json, read_jsonl
from tokenlm.pipeline.tasks import recipe_tasks, task_at
from tokenlm.run.artifacts import stage_key
from tokenlm.run.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SELF_SUPERVISED = ("tokenizer", "tokenizer/k8", "tokens/k8", "lm", "baselines/simclr", "vocoder")


@pytest.fixture(scope="module")
def tasks_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    corpus = write_corpus(root / "corpus", "unlabelled", labels=3, groups=3, clips=2, seconds=0.7, sample_rate=8000)
    pitch = write_corpus(root / "pitch", labels=2, groups=3, clips=2, seconds=0.5, sample_rate=8000)
    tones = write_corpus(root / "tones", labels=3, groups=3, clips=1, seconds=0.6, sample_rate=8000)
    later = write_corpus(root / "later", labels=2, groups=3, clips=1, seconds=0.4, sample_rate=8000)
    sections = {**TINY, "probe": {**TINY["probe"], "baselines": ["simclr", "timbre"]},
                "sweep": {"codebook_sizes": [4, 8], "with_lm": True, "with_probe": True, "lm_steps": 2}}
    recipe = root / "tasks.yaml"
    recipe.write_text(yaml.safe_dump({
        "run": {"dir": str(root / "run"), "device": "cpu"},
        "pretrain": {"path": str(corpus)},
        "tasks": {"pitch": {"path": str(pitch)}, "tones": str(tones)},
        **sections,
        "stages": ["prepare", "tokenize", "pretrain", "baselines", "probe", "vocoder", "sweep"],
    }))
    assert run_cli("run", recipe) == 0
    return {"run": RunDir(root / "run"), "recipe": recipe, "corpus": corpus, "tasks": (pitch, tones), "later": later}


def test_self_supervised_stages_see_only_the_corpus(tasks_run):
    run, corpus = tasks_run["run"], tasks_run["corpus"]
    manifest = read_jsonl(run.features / "manifest.jsonl")
    assert len(manifest) == 18 and all(r["path"].startswith(str(corpus)) for r in manifest)
    assert {r["label"] for r in manifest} == {None}  # the corpus has no labels to leak
    corpus_features = stage_key(run.features)
    # Every self-supervised stage is built on the corpus's features, through its own chain.
    assert read_json(run.tokenizer / "stage.json")["inputs"] == {"features": corpus_features}
    assert read_json(run.baseline("simclr") / "stage.json")["inputs"] == {"features": corpus_features}
    assert read_json(run.tokens(8) / "stage.json")["inputs"]["features"] == corpus_features
    assert read_json(run.lm / "stage.json")["inputs"]["tokens"] == stage_key(run.tokens(8))
    assert read_json(run.baseline("simclr") / "metrics.json")["train_clips"] == sum(
        r["split"] == "train" for r in manifest)
    # ...and no task clip is among the codes the LM was trained on.
    ids = {r["id"] for split in ("train", "val", "test") for r in read_jsonl(run.tokens(8) / f"{split}.index.jsonl")}
    assert ids == {r["id"] for r in manifest}


def test_each_task_is_featurised_encoded_and_probed_with_the_frozen_models(tasks_run):
    run = tasks_run["run"]
    for name, data in zip(("pitch", "tones"), tasks_run["tasks"]):
        task = run.task(name)
        # Features computed as the corpus's were; codes from the run's tokenizer.
        assert read_json(task.features / "meta.json")["n_mels"] == read_json(run.features / "meta.json")["n_mels"]
        assert read_json(task.tokens(8) / "stage.json")["inputs"]["codebook"] == stage_key(run.codebook(8))
        assert read_json(task.baseline("timbre") / "stage.json")["inputs"] == {"features": stage_key(task.features)}
        results = read_json(run.probe_task(name) / "results.json")
        assert results["task"] == name and results["task_data"] == str(data)
        rows = {r["name"]: r for r in results["rows"]}
        for row in ("logmel_stats", "bag_of_codes", "autoencoder", "lm_best", "simclr", "timbre"):
            assert rows[row]["status"] == "ok", rows[row]
    summary = read_json(run.probe / "summary.json")
    assert summary["tasks"] == ["pitch", "tones"]
    assert {"lm_best", "simclr", "timbre"} <= set(summary["representations"])
    assert "| LM best layer" in (run.probe / "summary.md").read_text()
    report = run.report.read_text()
    assert "### Task: pitch" in report and "### Task: tones" in report and "### Every task" in report
    # The sweep probes every task per K.
    rows = read_json(run.sweep / "sweep.json")["rows"]
    assert all(f"probe_lm_accuracy_{t}" in row for row in rows for t in ("pitch", "tones"))


def test_a_task_added_later_trains_nothing_self_supervised(tasks_run, capsys):
    run, later = tasks_run["run"], tasks_run["later"]
    before = {stage: (Path(run.root) / stage / "stage.json").stat().st_mtime_ns for stage in SELF_SUPERVISED}
    capsys.readouterr()
    assert run_cli("probe", run.root, "--task", later, "--baselines", "simclr", "--device", "cpu",
                   "--no-progress") == 0
    assert {stage: (Path(run.root) / stage / "stage.json").stat().st_mtime_ns for stage in SELF_SUPERVISED} == before
    rows = {r["name"]: r for r in read_json(run.probe_task("later") / "results.json")["rows"]}
    assert rows["lm_best"]["status"] == "ok" and rows["simclr"]["status"] == "ok"
    assert read_json(run.probe / "summary.json")["tasks"] == ["pitch", "tones", "later"]


def test_task_names_and_sections_are_checked(tmp_path):
    run = RunDir(tmp_path / "run")
    assert [t.name for t in recipe_tasks(run, ["data/esc50", "data/speech/"])] == ["esc50", "speech"]
    assert recipe_tasks(run, {"kw": {"path": "data/speech"}})[0].data.root == run.root / "tasks" / "kw"
    with pytest.raises(ConfigError, match="two tasks are named"):
        recipe_tasks(run, ["a/x", "b/x"])
    with pytest.raises(ConfigError, match="needs a path"):
        recipe_tasks(run, {"kw": {}})
    with pytest.raises(ConfigError, match="task name"):
        task_at(run, "data", name="../escape")
