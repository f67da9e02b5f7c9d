"""The baselines stage on its own: its command, its recipe keys (in the probe's section), and
the probe reusing what it trained."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli as tokenlm
from tests.stages.test_probe import TINY, make_run
from tokenlm.core.errors import ConfigError
from tokenlm.core.fileio import read_json
from tokenlm.pipeline import baselines as baselines_stage
from tokenlm.pipeline import probe as probe_stage
from tokenlm.pipeline.probe_config import BaselinesConfig, ProbeConfig, configs
from tokenlm.pipeline.registry import RunContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_one_probe_section_feeds_both_configs():
    probe, baselines = configs({"baselines": "timbre", "cs": [1.0], "epochs": 3}, {"epochs": 5, "seed": None})
    assert probe == ProbeConfig(baselines=("timbre",), cs=(1.0,))
    assert baselines == BaselinesConfig(epochs=5)
    with pytest.raises(ConfigError, match=r"'probe.epoch'.*epochs.*layers"):  # both configs' keys are named
        configs({"epoch": 3})
    with pytest.raises(ConfigError, match="crop_seconds"):
        configs({}, {"crop_seconds": 0})


def test_command_trains_what_the_probe_then_reuses(tmp_path):
    run = make_run(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"run:\n  dir: {run}\n  device: cpu\nprobe:\n  baselines: [timbre]\n"
                      + "".join(f"  {k}: {list(v) if isinstance(v, tuple) else v}\n" for k, v in TINY.items()))
    assert tokenlm("baselines", "--config", recipe, "--no-progress") == 0
    results = read_json(run / "baselines" / "timbre" / "results.json")
    assert results["name"] == "timbre" and 0.0 <= results["test"]["accuracy"] <= 1.0
    assert not (run / "baselines" / "vgg").exists()

    # `tokenlm run` drives both stages from the recipe: the probe finds the baseline up to date.
    stamp = (run / "baselines" / "timbre" / "stage.json").stat().st_mtime_ns
    ctx = RunContext.create(None, recipe, progress=False)
    baselines_stage.run(ctx)
    probe_stage.run(ctx)
    assert (run / "baselines" / "timbre" / "stage.json").stat().st_mtime_ns == stamp
    rows = {r["name"]: r for r in read_json(run / "probe" / "data" / "results.json")["rows"]}
    assert rows["timbre"]["test"] == results["test"]


def test_new_baselines_reach_the_probe_table_with_their_costs(tmp_path):
    run = make_run(tmp_path)
    small = {"temporal_widths": "3,9", "temporal_filters": 4, "transformer_dim": 8, "transformer_layers": 2,
             "transformer_heads": 2, "imagenet_width": 2}
    names = "temporal,timbre+temporal,audio_transformer,resnet18"
    probe, config = configs({**TINY, **small}, {"baselines": names})
    probe_stage.probe(run, probe, config, device="cpu", progress=False)
    results = read_json(run / "probe" / "data" / "results.json")
    rows = {r["name"]: r for r in results["rows"]}
    for name in names.split(","):
        assert rows[name]["encoder_params"] > 0 and rows[name]["flops_per_second"] > 0
        assert len(rows[name]["test"]["accuracy_ci"]) == 2
    assert rows["temporal"]["flops_per_second"] < rows["timbre+temporal"]["flops_per_second"]
    assert "random init" in rows["resnet18"]["title"]
    report = (run / "probe" / "data" / "report.md").read_text()
    assert "Audio Transformer" in report and "temporal CNN" in report
