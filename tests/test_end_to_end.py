"""The whole pipeline from a recipe, on a tiny corpus with tiny models: `tokenlm run` completes,
produces every stage's artifacts, and the report mentions every stage."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_corpus
from tokenlm.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "features": {"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 32, "patch_frames": 2},
    "tokenizer": {"codebook_size": 8, "autoencoder": {"hidden": [32, 16], "bottleneck": 8},
                  "training": {"epochs": 2, "batch_size": 64}},
    "codebook": {"niter": 5},
    "lm": {"n_layer": 1, "n_head": 2, "n_embd": 16, "context": 32,
           "training": {"steps": 6, "batch_size": 4, "warmup_steps": 1, "eval_every": 3, "log_every": 1}},
    "probe": {"baselines": ["vgg", "simclr", "timbre"], "epochs": 1, "simclr_epochs": 1, "batch_size": 8,
              "vgg_channels": [4, 8], "vgg_convs_per_block": 1, "timbre_filters": 4, "simclr_batch_size": 8,
              "simclr_projection_dim": 8, "crop_seconds": 0.5, "max_iter": 100},
    "vocoder": {"layers_per_cycle": 2, "cycles": 1, "residual_channels": 4, "gate_channels": 8, "skip_channels": 4,
                "cond_channels": 4, "crop_codes": 2, "val_crops": 2, "metrics_clips": 1, "metrics_seconds": 0.1,
                "training": {"steps": 2, "batch_size": 2, "eval_every": 2, "log_every": 1, "warmup_steps": 1}},
    "sweep": {"codebook_sizes": [4, 8], "with_vocoder": True},
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    corpus = write_corpus(root / "corpus", labels=3, groups=3, clips=3, seconds=1.0, sample_rate=8000)
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"run": {"dir": str(root / "run"), "device": "cpu"},
                                      "data": {"path": str(corpus)}, **TINY}))
    main(["run", str(recipe)])  # raises SystemExit on any failure
    return root / "run"


def test_every_stage_leaves_its_artifacts(finished_run):
    run = finished_run
    expected = [
        "manifest.jsonl", "features/stage.json",
        "tokenizer/autoencoder.safetensors", "tokenizer/k8/codebook.npy", "tokens/k8/train.bin",
        "lm/model.safetensors", "lm/config.json", "lm/train_log.csv",
        "probe/corpus/results.json", "probe/corpus/report.md", "probe/summary.md",
        "baselines/vgg/stage.json", "baselines/simclr/stage.json", "baselines/timbre/stage.json",
        "vocoder/wavenet.safetensors", "vocoder/metrics.json",
        "sweep/sweep.csv", "sweep/report.md", "tokenizer/k4/codebook.npy",
        "report.md",
    ]
    missing = [p for p in expected if not (run / p).exists()]
    assert not missing, f"missing artifacts: {missing}"
    rows = json.loads((run / "sweep" / "sweep.json").read_text())["rows"]
    assert [r["k"] for r in rows] == [4, 8] and all("vocoder_logmel_db" in r for r in rows)


def test_the_report_mentions_every_stage(finished_run):
    report = (finished_run / "report.md").read_text()
    for heading in ("## Dataset", "## Tokenizer", "## Code language model", "## Linear probe",
                    "## WaveNet decoder", "## Codebook-size sweep"):
        assert heading in report, heading
    assert "VGG" in report and "SimCLR" in report and "timbre" in report
    generated = list((finished_run / "generated").glob("*_continued.wav"))
    assert len(generated) == 1 and f"generated/{generated[0].name}" in report


# What every run writes again from the cached results, by design: the report, the sweep's
# summary (its trained models live in RUN/sweep_k) and the run's current codebook size.
SUMMARIES = ("report.md", "report.html", "report_files/", "sweep/", "tokenizer/current.json")


def test_a_rerun_does_no_work(finished_run, capsys):
    recipe = finished_run.parent / "tiny.yaml"

    def files():
        return {str(p.relative_to(finished_run)): p for p in finished_run.rglob("*") if p.is_file()}

    # Every file's modification time, not the stage keys: a stage that silently rebuilds
    # to the same key still rewrites its files.
    before = {name: p.stat().st_mtime_ns for name, p in files().items()}
    # (stage.json holds wall times, so it is left out)
    summaries = {name: p.read_bytes() for name, p in files().items()
                 if name.startswith(SUMMARIES) and not name.endswith("stage.json")}
    assert "report.md" in summaries and "sweep/sweep.json" in summaries
    main(["run", str(recipe)])
    assert "up to date" in capsys.readouterr().err
    after = files()
    assert sorted(after) == sorted(before)
    rewritten = sorted(name for name, p in after.items() if p.stat().st_mtime_ns != before[name])
    assert [name for name in rewritten if not name.startswith(SUMMARIES)] == []
    assert {name: after[name].read_bytes() for name in summaries} == summaries  # written again, the same
