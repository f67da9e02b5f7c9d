"""The LM's objectives (lm.objective): next (the reference, unchanged), multi (several codes
ahead) and masked (masked spans, bidirectional). Tiny models on fabricated codes, CPU."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from conftest import run_cli

from tokenlm.core.errors import ConfigError
from tokenlm.core.fileio import read_json
from tokenlm.data.store import RaggedSplit
from tokenlm.lm.code_lm import IGNORE, CodeLM, lm_loss
from tokenlm.lm.objectives import ahead_labels, mask_spans, masked_loss, multi_loss
from tokenlm.models.gpt import LMConfig, build_gpt2
from tokenlm.pipeline.pretrain import _objective, pretrain
from tokenlm.training import TrainConfig

K = 16
TINY = dict(n_layer=2, n_head=2, n_embd=32, context=32)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def token_run(tmp_path):
    from stages.test_pretrain import make_token_run  # structured codes: motifs plus noise

    return make_token_run(tmp_path / "run")


def fixed_batch(seed: int = 1, width: int = 33):
    ids = torch.randint(0, K + 1, (3, width), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]


def test_default_objective_is_the_next_code_loss_of_before():
    cfg = LMConfig(**TINY)
    assert cfg.objective == "next"
    # The stage key of a next-code LM is the one from before objectives existed (no rerun).
    assert set(cfg.key()) == {"n_layer", "n_head", "n_embd", "context", "dropout", "attn_dropout",
                              "attn_implementation"}
    torch.manual_seed(0)
    model = build_gpt2(cfg, K)
    inputs, labels = fixed_batch()
    with torch.no_grad():
        loss, count = lm_loss(model, (inputs, labels))
        # the plain GPT next-code cross-entropy, computed here from the logits
        logits = model(input_ids=inputs).logits
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert count == 96 and float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert model.config.vocab_size == K + 1 and getattr(model.config, "is_causal", True)


@pytest.mark.parametrize("objective", ["next", "multi", "masked"])
def test_a_few_steps_lower_the_loss(tmp_path, objective):
    run = token_run(tmp_path)
    cfg = LMConfig(**TINY, objective=objective, predict_ahead=3)
    splits = {name: RaggedSplit(run / "tokens" / f"k{K}", name, "uint16") for name in ("train", "val")}
    torch.manual_seed(0)
    model = build_gpt2(cfg, K)
    trained, loss_fn, train_batch, _ = _objective(model, cfg, splits, K, batch_size=8)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    batch = train_batch(rng, 8)
    first, _ = loss_fn(trained, batch)
    for _ in range(15):
        loss, _ = loss_fn(trained, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last, _ = loss_fn(trained, batch)
    first, last = float(first.detach()), float(last.detach())
    assert math.isfinite(first) and last < 0.8 * first


@pytest.mark.parametrize("objective, changes_the_past", [("next", False), ("multi", False), ("masked", True)])
def test_only_masked_lets_a_later_code_change_an_earlier_state(tmp_path, objective, changes_the_past):
    torch.manual_seed(0)
    model = build_gpt2(LMConfig(**TINY, objective=objective), K, info={"code_rate": 20.0})
    model.save_pretrained(tmp_path)
    lm = CodeLM.load(tmp_path, device="cpu")
    assert lm.objective == objective
    clip = np.arange(12) % K
    changed = clip.copy()
    changed[-1] = (changed[-1] + 1) % K
    a, b = lm.hidden_states([clip, changed])  # one batch: padding must not matter either
    assert torch.allclose(a[:, -1], b[:, -1]) is False
    assert (not torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)) is changes_the_past
    alone = lm.hidden_states([clip[:5]])[0]  # a short clip batched alone: no padding
    padded = lm.hidden_states([clip[:5], clip])[0]  # ... and right-padded beside a longer one
    assert torch.allclose(alone, padded, atol=1e-5)


def test_multi_targets_stop_at_the_end_of_a_clip():
    bos = K
    labels = torch.tensor([[1, 2, bos, 4, 5, IGNORE]])
    assert ahead_labels(labels, 1, bos).tolist() == labels.tolist()
    assert ahead_labels(labels, 2, bos).tolist() == [[2, bos, IGNORE, 5, IGNORE, IGNORE]]
    assert ahead_labels(labels, 3, bos).tolist() == [[bos, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]]
    # In eval mode the multi model is the next-code LM: validation is the next-code loss.
    torch.manual_seed(0)
    model = build_gpt2(LMConfig(**TINY, objective="multi"), K)
    trained, _, _, _ = _objective(model, LMConfig(**TINY, objective="multi"), {"train": _EmptySplit()}, bos, 8)
    trained.eval()
    with torch.no_grad():
        loss, _ = multi_loss(trained, fixed_batch(), bos)
        assert float(loss) == pytest.approx(float(lm_loss(model, fixed_batch())[0]), rel=1e-6)


class _EmptySplit:
    data, rows = np.zeros(0, dtype=np.uint16), []
    offsets = lengths = np.zeros(0, dtype=np.int64)


def test_masking_spans_codes_and_never_bos():
    ids = np.array([[K] + list(range(15)) + [K] + list(range(15))])
    inputs, labels = mask_spans(ids, np.random.default_rng(0), mask_id=K + 1, bos=K, prob=0.15, span=4)
    masked = inputs == K + 1
    assert masked.any() and (labels[masked] == torch.as_tensor(ids)[masked]).all()
    assert (labels[~masked] == IGNORE).all() and not masked[torch.as_tensor(ids) == K].any()
    torch.manual_seed(0)
    model = build_gpt2(LMConfig(**TINY, objective="masked"), K)
    assert model.config.tokenlm["mask_token_id"] == K + 1 and model.config.vocab_size == K + 2
    with torch.no_grad():
        loss, count = functools.partial(masked_loss, bos=K)(model, (inputs, labels))
    assert count == int(masked.sum()) and math.isfinite(float(loss))


def test_masked_lm_end_to_end_refuses_generation_in_one_line(tmp_path, capsys):
    run = token_run(tmp_path)
    training = TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=10, patience=0,
                           log_every=10, device="cpu")
    out = pretrain(run, LMConfig(**TINY, objective="masked"), training, progress=False)
    metrics = read_json(out / "metrics.json")
    assert metrics["objective"] == "masked" and "val_ppl" not in metrics and "does not apply" in metrics["perplexity"]
    assert 0.0 <= metrics["val_masked_accuracy"] <= 1.0 and 0.0 <= metrics["test_masked_accuracy"] <= 1.0
    assert read_json(out / "config.json")["tokenlm"]["objective"] == "masked"
    lm = CodeLM.load(out, device="cpu")
    with pytest.raises(ConfigError, match="masked"):
        lm.perplexity([np.arange(5)])
    capsys.readouterr()
    assert run_cli("generate-codes", run, "--n", "3", "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "masked-code LM" in err, err


def test_objective_from_a_recipe_section_and_bad_values():
    from tokenlm.pipeline.pretrain import lm_configs

    model, _ = lm_configs({"objective": "multi", "predict_ahead": 2, "training": {"steps": 5}})
    assert (model.objective, model.predict_ahead) == ("multi", 2) and model.key()["predict_ahead"] == 2
    assert "mask_prob" not in model.key()
    for bad in ({"objective": "bogus"}, {"predict_ahead": 0}, {"mask_prob": 1.5}):
        with pytest.raises(ConfigError, match="objective|predict_ahead|mask_prob"):
            lm_configs(bad)
