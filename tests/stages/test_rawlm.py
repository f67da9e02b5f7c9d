"""tokenlm rawlm: the raw-audio transformer (causal, conditioned on the codes before its
window), sized to the WaveNet, and the stage on a tiny run."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import run_cli as tokenlm
from tokenlm.core.fileio import read_json
from tokenlm.models.sample_transformer import SampleTransformer, SampleTransformerConfig, matched_width
from tokenlm.pipeline.report import write_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = SampleTransformerConfig(d_model=16, n_layer=2, n_head=2, context=64)


@pytest.mark.parametrize("codebook_size", [0, 8])
def test_a_future_sample_never_changes_a_past_output(codebook_size):
    torch.manual_seed(0)
    model = SampleTransformer(SampleTransformerConfig(**{**TINY.__dict__, "codebook_size": codebook_size,
                                                         "prefix_codes": 3})).eval()
    audio = torch.randint(0, 256, (2, 40))
    prefix = torch.randint(0, 9, (2, 3)) if codebook_size else None
    logits = model(audio, prefix)
    assert logits.shape == (2, 256, 40)
    changed = audio.clone()
    changed[:, 25] = (changed[:, 25] + 7) % 256
    after = model(changed, prefix)
    # Output t predicts sample t from samples < t: sample 25 shows from output 26 on.
    assert torch.equal(logits[:, :, :26], after[:, :, :26])
    assert not torch.allclose(logits[:, :, 26:], after[:, :, 26:])
    if codebook_size:  # the codes before the window reach every output
        other = model(audio, (prefix + 1) % 9)
        assert not torch.allclose(logits[:, :, :1], other[:, :, :1])


def test_a_few_steps_lower_the_loss_and_generation_continues():
    torch.manual_seed(0)
    model = SampleTransformer(TINY)
    audio = torch.randint(100, 110, (4, 32))  # a narrow band of classes: quick to learn
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(audio), audio)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    out = model.generate(audio[:1, :8], 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 5) and int(out.min()) >= 0 and int(out.max()) < 256


def test_matched_width_comes_close_to_the_target():
    for target in (20_000, 100_000):
        config = matched_width(TINY, target)
        params = sum(p.numel() for p in SampleTransformer(config).parameters())
        assert abs(params - target) / target < 0.15 and config.d_model % TINY.n_head == 0


def test_rawlm_writes_results_with_the_fields(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("rawlm:\n  context_ms: 8\n  prefix_codes: 2\n  layers_per_cycle: 4\n  residual_channels: 8\n"
                      "  gate_channels: 16\n  skip_channels: 16\n  n_head: 2\n  steps: 3\n  batch_size: 2\n"
                      "  eval_every: 3\n  eval_windows: 2\n  generate_seconds: 0.002\n")
    assert tokenlm("rawlm", run, "--config", recipe, "--device", "cpu", "--no-progress") == 0
    results = read_json(run / "rawlm" / "results.json")
    assert list(results["models"]) == ["transformer", "wavenet", "transformer+codes"]
    for result in results["models"].values():
        for split in ("val", "test"):
            assert set(result[split]) >= {"bits_per_sample", "top1", "top5"}
            assert 0 <= result[split]["top1"] <= result[split]["top5"] <= 1
        assert result["parameters"] > 0 and result["flops_per_sample"] > 0
        assert result["train_seconds"] > 0 and result["train_samples_per_s"] > 0
    params = [r["parameters"] for r in results["models"].values()]
    assert max(params[:2]) / min(params[:2]) < 1.3  # the transformer sized to the WaveNet
    assert {p.name for p in (run / "rawlm" / "samples").iterdir()} == {
        "prompt.wav", "transformer.wav", "wavenet.wav", "transformer_codes.wav"}
    assert "transformer+codes" in (run / "rawlm" / "report.md").read_text()
    report = write_report(run).read_text()
    assert "## Raw-audio next-sample prediction" in report and "`rawlm/samples/`" in report
    assert tokenlm("rawlm", run, "--models", "wavenet,lstm") != 0


def test_the_pipeline_step_does_nothing_without_a_rawlm_section(tiny_run):
    from tokenlm.pipeline import rawlm as rawlm_stage
    from tokenlm.pipeline.registry import RunContext

    rawlm_stage.run(RunContext.create(tiny_run))  # the shared run stays read-only: nothing is written
    assert not (tiny_run / "rawlm").exists()
