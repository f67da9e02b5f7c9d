"""The GPT-2 code LM: building from config, the saved format, and CodeLM inference
(hidden states with sliding windows, likelihoods, KV-cached generation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenlm.core.config import build
from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.lm.code_lm import CodeLM, count_baselines, plan_windows, scoring_windows
from tokenlm.models.gpt import LMConfig, build_gpt2, matmul_params, resolve_attn_implementation, train_flops_per_token

K = 16
TINY = LMConfig(n_layer=2, n_head=2, n_embd=32, context=16, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only add sync


@pytest.fixture(scope="module")
def saved_lm(tmp_path_factory):
    torch.manual_seed(0)
    model = build_gpt2(TINY, K, info={"code_rate": 20.0, "tokenizer_hash": "abc"})
    path = tmp_path_factory.mktemp("lm")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(saved_lm):
    return CodeLM.load(saved_lm, device="cpu")


def test_build_layout_and_from_pretrained(saved_lm):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(saved_lm)  # plain transformers, no tokenlm involved
    assert model.config.vocab_size == K + 1
    assert model.config.n_positions == 16 and model.config.n_layer == 2
    info = model.config.tokenlm
    assert info["codebook_size"] == K and info["bos_token_id"] == K and info["code_rate"] == 20.0
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied


def test_config_is_strict():
    with pytest.raises(ConfigError, match="n_head"):
        build(LMConfig, {"n_embd": 30, "n_head": 4})
    with pytest.raises(ConfigError, match="unknown option 'lm.layers'"):
        build(LMConfig, {"layers": 3}, where="lm")
    with pytest.raises(ConfigError, match="attn_implementation"):
        build(LMConfig, {"attn_implementation": "flash"})


def test_attention_choice_and_flops():
    assert resolve_attn_implementation("auto", "cpu") == "sdpa"  # measured: scripts/bench_lm.py
    assert resolve_attn_implementation("auto", "cuda") == "sdpa"
    assert resolve_attn_implementation("eager", "cpu") == "eager"
    n = matmul_params(4, 256, 257)
    assert n == 12 * 4 * 256 * 256 + 257 * 256
    assert train_flops_per_token(4, 256, 257, 512) == 6 * n + 12 * 4 * 256 * 512


def test_plan_windows_cover_each_position_once():
    for n in (1, 5, 16, 17, 40, 100):
        windows = plan_windows(n, 16, first=1)
        covered = [p for _, end, emit in windows for p in range(emit, end)]
        assert covered == list(range(1, n))
        for start, end, emit in windows:
            assert 0 <= start <= emit < end and end - start <= 16
            if start > 0:  # later windows keep half a context on the left
                assert emit - start >= 8


def test_hidden_states_shapes_batching_and_long_clips(lm):
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, K, 5), rng.integers(0, K, 40), np.zeros(0, dtype=np.int64), rng.integers(0, K, 15)]
    states = lm.hidden_states(clips, batch_size=3)
    assert [tuple(s.shape) for s in states] == [(3, 5, 32), (3, 40, 32), (3, 0, 32), (3, 15, 32)]
    # Padding and batch composition change nothing.
    for clip, batched in zip(clips, states):
        alone = lm.hidden_states([clip], batch_size=1)[0]
        torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)
    # A long clip: its first window is [BOS] + the first 15 codes, the rest come from
    # windows of the full context that end at the emitted position.
    long = clips[1]
    seq = torch.tensor(np.concatenate([[K], long]))
    with torch.no_grad():
        head = lm.model(input_ids=seq[None, :16], output_hidden_states=True).hidden_states
        torch.testing.assert_close(states[1][:, :15], torch.stack(head)[:, 0, 1:], atol=1e-5, rtol=1e-5)
        last = lm.model(input_ids=seq[None, -16:], output_hidden_states=True).hidden_states
        torch.testing.assert_close(states[1][:, -1], torch.stack(last)[:, 0, -1], atol=1e-5, rtol=1e-5)
    # A (B, T) tensor is B clips of length T.
    square = lm.hidden_states(torch.tensor(np.stack([clips[3], clips[3]])))
    assert len(square) == 2 and square[0].shape == (3, 15, 32)
    pooled = lm.pooled_hidden_states(clips[:2])
    assert pooled.shape == (2, 3, 32)


def test_log_likelihood_matches_a_direct_forward(lm):
    rng = np.random.default_rng(1)
    clip = rng.integers(0, K, 10)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor(np.concatenate([[K], clip[:-1]]))[None]).logits[0]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(clip)[:, None])[:, 0]
    torch.testing.assert_close(lm.log_likelihood([clip])[0], expected, atol=1e-5, rtol=1e-5)
    long = rng.integers(0, K, 45)
    logp = lm.log_likelihood([long, clip], batch_size=2)
    assert logp[0].shape == (45,) and torch.isfinite(logp[0]).all() and (logp[0] < 0).all()
    nll = -(logp[0].sum() + logp[1].sum()) / 55
    assert lm.perplexity([long, clip]) == pytest.approx(math.exp(float(nll)), rel=1e-5)
    # Each code is scored once, by exactly the windows the trainer's validation uses.
    assert sum(int((w[1] >= 0).sum()) for w in scoring_windows(long, K, 16)) == 45


@pytest.fixture(scope="module")
def sharp_lm(tmp_path_factory):
    """A model whose next code depends on the whole window. GPT-2's initial weights are so
    small that an untrained model mostly echoes its newest input (greedy decoding repeats the
    last prompt code), which a generator that forgot the context would reproduce too. With
    the matrices scaled up 10x attention is sharp and the context changes the prediction."""
    torch.manual_seed(0)
    model = build_gpt2(TINY, K)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(10.0)
    path = tmp_path_factory.mktemp("sharp_lm")
    model.save_pretrained(path)
    return CodeLM.load(path, device="cpu")


def _generate_recording_logits(lm, prompt, n, **options):
    """lm.generate(prompt, n, **options) and the (n, K) logits each code was drawn from."""
    steps = []
    hook = lm.model.register_forward_hook(lambda module, args, out: steps.append(out.logits[0, -1, :K].clone()))
    try:
        codes = lm.generate(torch.tensor(prompt), n, **options)
    finally:
        hook.remove()
    return codes, torch.stack(steps)


@torch.no_grad()
def _full_window_logits(lm, prompt, codes):
    """The (n, K) logits of a full forward of each step's window, by the documented rule:
    BOS + prompt + the codes so far, at most a context long; when the newest code has no
    position left the window restarts from its last context // 2 codes."""
    window = [lm.bos, *prompt][-lm.context:]
    out = []
    for code in codes.tolist():
        if len(window) > lm.context:
            window = window[-(lm.context // 2):]
        out.append(lm.model(input_ids=torch.tensor([window])).logits[0, -1, :K])
        window.append(code)
    return torch.stack(out)


def test_the_sharp_model_depends_on_more_than_the_newest_code(sharp_lm):
    # What makes the generation tests below able to fail: predicting from the newest code
    # alone would pick another code at many steps.
    prompt = [3, 1, 4, 1, 5]
    codes = sharp_lm.generate(torch.tensor(prompt), 40, temperature=0)
    with torch.no_grad():
        alone = torch.stack([sharp_lm.model(input_ids=torch.tensor([[c]])).logits[0, -1, :K]
                             for c in [prompt[-1], *codes[:-1].tolist()]])
    assert int((alone.argmax(-1) != codes).sum()) >= 10
    assert len(set(codes.tolist())) >= 4  # not stuck on one code


def test_generate_with_cache_equals_full_window_forwards(sharp_lm):
    lm = sharp_lm
    prompt = [3, 1, 4, 1, 5]
    # 40 codes from a 5-code prompt: the 16-position window slides four times.
    cached, cached_logits = _generate_recording_logits(lm, prompt, 40, temperature=0, use_cache=True)
    naive, naive_logits = _generate_recording_logits(lm, prompt, 40, temperature=0, use_cache=False)
    reference = _full_window_logits(lm, prompt, cached)
    assert cached.shape == (40,)
    torch.testing.assert_close(cached_logits, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(naive_logits, reference, atol=1e-4, rtol=1e-4)
    assert torch.equal(cached, reference.argmax(-1)) and torch.equal(cached, naive)
    # A prompt longer than the context: its last context codes (BOS dropped) open the window.
    long_prompt = [(7 * i) % K for i in range(20)]
    cached, cached_logits = _generate_recording_logits(lm, long_prompt, 12, temperature=0)
    torch.testing.assert_close(cached_logits, _full_window_logits(lm, long_prompt, cached), atol=1e-4, rtol=1e-4)


def test_sampling_with_and_without_cache_agree(sharp_lm):
    lm = sharp_lm
    prompt = torch.tensor([3, 1, 4, 1, 5])
    runs = {}
    for seed in (3, 4):
        cached = lm.generate(prompt, 40, temperature=1.0, top_k=3, seed=seed, use_cache=True)
        assert torch.equal(cached, lm.generate(prompt, 40, temperature=1.0, top_k=3, seed=seed, use_cache=False))
        assert torch.equal(cached, lm.generate(prompt, 40, temperature=1.0, top_k=3, seed=seed))  # seeded
        # Every sampled code is among the 3 most likely under its full window, slides included.
        reference = _full_window_logits(lm, prompt.tolist(), cached)
        top3 = reference.topk(3, dim=-1).indices
        assert bool((top3 == cached[:, None]).any(dim=1).all())
        runs[seed] = cached
    assert not torch.equal(runs[3], runs[4])  # the seed matters
    sampled = lm.generate(prompt, 40, temperature=2.0, seed=3)
    assert int(sampled.max()) < K  # BOS is never sampled
    assert lm.generate(None, 4, seed=0).shape == (4,)


def test_eager_and_sdpa_agree(saved_lm, lm):
    eager = CodeLM.load(saved_lm, device="cpu", attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    assert lm.model.config._attn_implementation == "sdpa"
    clips = [np.arange(20) % K, np.arange(7) % K]
    for a, b in zip(eager.hidden_states(clips), lm.hidden_states(clips)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    prompt = torch.tensor([2, 7, 1])
    assert torch.equal(eager.generate(prompt, 20, temperature=0), lm.generate(prompt, 20, temperature=0))


def test_codes_from_another_codebook_are_refused(lm):
    with pytest.raises(ArtifactError, match="16-code tokenizer"):
        lm.hidden_states([np.array([1, 2, 99])])
    with pytest.raises(ArtifactError, match="16-code"):
        lm.generate(torch.tensor([16]), 2)


def test_count_baselines_add_one():
    train = [np.array([0, 1, 0, 1])]
    val = [np.array([0, 1])]
    refs = count_baselines(train, val, 2)
    # unigram: p(0) = p(1) = (2+1)/(4+2); bigram: p(0|BOS) = 2/3, p(1|0) = 3/4
    assert refs["unigram_ppl"] == pytest.approx(2.0)
    assert refs["bigram_ppl"] == pytest.approx(math.exp(-(math.log(2 / 3) + math.log(3 / 4)) / 2))
