"""The code LM over several codes per patch (tokenlm.lm.multilevel): one position per patch, the
sum of its levels' embeddings in, one head per level out. Tiny models, CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenlm.core.errors import ConfigError
from tokenlm.data.store import RaggedSplit, RaggedWriter
from tokenlm.lm import multilevel
from tokenlm.lm.code_lm import CodeLM
from tokenlm.models.gpt import LMConfig, build_gpt2

K, L = 8, 3
TINY = dict(n_layer=2, n_head=2, n_embd=32, context=16)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def level_lm(tmp_path, context=16) -> CodeLM:
    torch.manual_seed(0)
    model = build_gpt2(LMConfig(**{**TINY, "context": context}), K * L, info={"code_rate": 20.0, "levels": L})
    model.save_pretrained(tmp_path)
    return CodeLM.load(tmp_path, device="cpu")


def clip(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, K, (n, L))


def test_ids_and_heads_are_laid_out_per_level():
    local = np.array([[0, 1, 7], [K, K, K]])
    assert multilevel.to_ids(local, K).tolist() == [[0, 9, 23], [24, 24, 24]]
    logits = torch.arange(K * L + 1, dtype=torch.float32)
    heads = multilevel.level_logits(logits, L, K)
    assert heads.shape == (L, K + 1)
    assert heads[1].tolist() == list(range(K, 2 * K)) + [K * L]  # level 1's codes, then BOS


def test_kv_cache_generation_equals_full_forwards_per_level(tmp_path):
    lm = level_lm(tmp_path, context=16)
    assert lm.levels == L and lm.codebook_size == K
    prompt = clip(5)
    for kwargs in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 4, "seed": 3}):
        # 30 patches from a 5-patch prompt: the window slides past the 16-position context
        cached = lm.generate(prompt, n=30, **kwargs)
        full = lm.generate(prompt, n=30, use_cache=False, **kwargs)
        assert cached.shape == (30, L)
        assert torch.equal(cached, full)
        assert int(cached.min()) >= 0 and int(cached.max()) < K
    # greedy, step by step: each new patch's levels are each head's argmax of a full forward
    greedy = lm.generate(prompt, n=3, temperature=0.0)
    seq = prompt
    for step in range(3):
        ids = torch.from_numpy(multilevel.to_ids(np.concatenate([np.full((1, L), K), seq]), K))[None]
        heads = multilevel.level_logits(multilevel.forward(lm.model, ids).logits[0, -1], L, K)
        expected = heads[:, :K].argmax(-1)
        assert torch.equal(greedy[step], expected)
        seq = np.concatenate([seq, expected.numpy()[None]])


def test_states_read_a_patch_as_the_sum_of_its_levels_and_never_look_ahead(tmp_path):
    lm = level_lm(tmp_path)
    a = clip(10, seed=1)
    states = lm.hidden_states([a])[0]
    assert states.shape == (lm.num_layers + 1, 10, lm.hidden_size)
    wte, wpe = lm.model.transformer.wte.weight, lm.model.transformer.wpe.weight
    ids = torch.from_numpy(multilevel.to_ids(a, K))
    expected0 = wte[ids].sum(1) + wpe[1:11]  # layer 0: sum of the levels' embeddings + position
    assert torch.allclose(states[0], expected0.detach(), atol=1e-5)
    b = a.copy()
    b[-1, 2] = (b[-1, 2] + 1) % K  # the last patch's last level only
    sa, sb = lm.hidden_states([a, b])
    assert torch.allclose(sa[:, :-1], sb[:, :-1], atol=1e-5) and not torch.allclose(sa[:, -1], sb[:, -1])
    with pytest.raises(ConfigError, match=r"\(T, 3\)"):
        lm.hidden_states([np.arange(5)])


def test_likelihood_is_the_training_loss_and_sums_the_levels(tmp_path):
    lm = level_lm(tmp_path, context=8)
    clips = [clip(20, seed=2), clip(3, seed=3)]  # one longer than the context: sliding windows
    logps = lm.log_likelihood(clips)
    assert [len(x) for x in logps] == [20, 3]
    # independently: one full window per patch, each level's log-softmax over its K + 1 ids
    c = clips[1]
    ids = torch.from_numpy(multilevel.to_ids(np.concatenate([np.full((1, L), K), c]), K))[None]
    heads = torch.log_softmax(multilevel.level_logits(multilevel.forward(lm.model, ids).logits[0].float(), L, K), -1)
    expected = sum(heads[np.arange(3), level, c[:, level]] for level in range(L))
    assert torch.allclose(logps[1], expected.detach(), atol=1e-5)
    # the training/validation loss per code is perplexity's log
    batches = [multilevel.pad([i], [lab], K * L) for i, lab in multilevel.scoring_windows(clips[0], K, 8)]
    total = count = 0
    for batch in batches:
        with torch.no_grad():
            loss, n = multilevel.level_loss(lm.model, batch, levels=L, size=K)
        total, count = total + float(loss) * n, count + n
    assert count == 20 * L
    assert math.isclose(math.exp(-float(logps[0].sum()) / (20 * L)), math.exp(total / count), rel_tol=1e-5)


def test_packed_sequences_keep_every_level_behind_a_bos_row(tmp_path):
    with RaggedWriter(tmp_path, "train", "uint16", width=L) as writer:
        for i, n in enumerate((5, 30, 2)):
            writer.add({"id": str(i)}, clip(n, seed=i))
    split = RaggedSplit(tmp_path, "train", "uint16", width=L)
    packed = multilevel.PackedLevels(split, K, context=12)
    ids, labels = packed(np.random.default_rng(0), 4)
    assert ids.shape == labels.shape == (4, 12, L)
    assert torch.equal(ids[:, 1:], multilevel.to_ids(labels[:, :-1], K))  # labels are the inputs shifted
    bos = (labels == K).all(-1)
    assert ((labels == K).any(-1) == bos).all()  # a BOS is a whole row, never one level
    assert int(labels.max()) <= K and int(ids.max()) <= K * L


def test_pretrain_on_two_level_tokens_learns_both_levels_and_generates(tmp_path):
    """The pretrain stage on (patches, 2) tokens: level 1 repeats motifs, level 2 is a function
    of level 1 (plus noise), so a model that reads both beats the first level's bigram and its
    per-code perplexity equals CodeLM.perplexity; generate-codes continues a (T, 2) prompt."""
    from stages.test_pretrain import tiny_training

    from tokenlm.core.fileio import read_json, write_json
    from tokenlm.pipeline.generate_codes import generate_codes
    from tokenlm.pipeline.pretrain import pretrain
    from tokenlm.run.artifacts import Stage

    k, rng = 16, np.random.default_rng(0)
    motifs = [rng.choice(k, size=int(rng.integers(3, 6)), replace=False) for _ in range(6)]
    run = tmp_path / "run"
    stage = Stage(run / "tokens" / f"k{k}", config={"k": k, "levels": 2}, inputs={})
    work = stage.start()
    for split, n in zip(("train", "val", "test"), (60, 12, 12)):
        with RaggedWriter(work, split, "uint16", width=2) as writer:
            for i in range(n):
                motif = motifs[rng.integers(len(motifs))]
                first = motif[(np.arange(40) + rng.integers(len(motif))) % len(motif)]
                second = (3 * first + 1) % k
                noise = rng.random(40) < 0.1
                second[noise] = rng.integers(0, k, size=int(noise.sum()))
                writer.add({"id": f"{split}-{i}", "label": f"m{i % 3}"}, np.stack([first, second], axis=1))
    write_json(work / "meta.json", {"codebook_size": k, "levels": 2, "quantizer": "residual", "code_rate": 20.0,
                                    "sample_rate": 16000, "samples_per_code": 800, "dtype": "uint16",
                                    "tokenizer_hash": "fab"})
    stage.finish()
    (run / "tokenizer").mkdir(parents=True)
    write_json(run / "tokenizer" / "current.json", {"codebook_size": k})
    out = pretrain(run, LMConfig(n_layer=2, n_head=2, n_embd=32, context=32), tiny_training(steps=120),
                   progress=False)
    metrics = read_json(out / "metrics.json")
    lm = CodeLM.load(out, device="cpu")
    assert lm.levels == 2 and lm.codebook_size == k and lm.model.config.vocab_size == 2 * k + 1
    val = [c for _, c in RaggedSplit(run / "tokens" / f"k{k}", "val", "uint16", width=2)]
    assert lm.perplexity(val) == pytest.approx(metrics["val_ppl"], rel=1e-4)
    assert metrics["val_ppl"] < metrics["bigram_ppl"] < metrics["unigram_ppl"], metrics
    prompt = tmp_path / "prompt.npy"
    np.save(prompt, val[0][:5].astype(np.int64))
    codes = np.load(generate_codes(run, prompt_codes=prompt, n=20, temperature=0.0, device="cpu"))
    assert codes.shape == (25, 2) and int(codes.max()) < k
    np.testing.assert_array_equal(codes[:5], val[0][:5])
    with pytest.raises(ConfigError, match="objective masked"):
        pretrain(run, LMConfig(n_layer=2, n_head=2, n_embd=32, context=32, objective="masked"),
                 tiny_training(steps=2), progress=False)
