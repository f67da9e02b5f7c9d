"""Issue 21's LM levers: centroid-initialised embeddings, training on clip openings, and the
probe's readings of a clip (once, twice). Tiny models, real code paths, CPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tokenlm.core.fileio import read_json
from tokenlm.data.store import RaggedSplit, RaggedWriter
from tokenlm.evaluation.linear_probe import fit_linear_probe
from tokenlm.evaluation.lm_readings import keep_reading, read_codes, reading_candidates
from tokenlm.lm.code_lm import IGNORE, CodeLM
from tokenlm.models.code_embeddings import centroid_embeddings, init_from_centroids
from tokenlm.models.gpt import LMConfig, build_gpt2, vocab_layout
from tokenlm.pipeline.pretrain import PackedClips, pretrain
from tokenlm.run.artifacts import Stage
from tokenlm.run.rundir import RunDir
from tokenlm.training import TrainConfig
from tokenlm.training.clip_starts import ClipStarts

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = dict(n_layer=2, n_head=2, n_embd=32, context=64)


# ---- training on clip openings --------------------------------------------------------

def position_split(tmp_path, clips: int = 20, length: int = 1000) -> RaggedSplit:
    """Clips whose code at position t is t: a target's value is its position in its clip."""
    stage = Stage(tmp_path / "tokens", config={}, inputs={})
    work = stage.start()
    with RaggedWriter(work, "train", "uint16") as writer:
        for i in range(clips):
            writer.add({"id": f"c{i}"}, np.arange(length, dtype=np.uint16))
    stage.finish()
    return RaggedSplit(tmp_path / "tokens", "train", "uint16")


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_share_of_targets_in_clip_openings_is_the_configured_one(tmp_path, share):
    split = position_split(tmp_path)
    bos, context, crop = 1000, 64, (20, 40)
    batches = ClipStarts(PackedClips(split, bos, context), share, crop)
    first_n = crop[1] + 1  # an opening of L <= 40 codes scores positions 0..L
    within = total = 0
    for step in range(300):
        inputs, labels = batches(np.random.default_rng([0, 0, step]), 8)
        assert inputs.shape == labels.shape == (8, context) and (labels != IGNORE).all()
        # Every label is the code that truly follows its input (a clip's next position, or BOS).
        follows = (labels == inputs + 1) | (inputs == bos) & (labels == 0)
        assert follows.all()
        within += int((labels < first_n).sum())
        total += labels.numel()
    # Packed sequences of 1000-code clips almost never hold a clip's first 41 codes (a crop
    # starts at 0 once in ~940), so the share within them is the openings' share: 2400 rows,
    # binomial standard error <= 0.01.
    assert within / total == pytest.approx(share, abs=0.035)
    if share == 1.0:
        assert within == total


def test_openings_are_a_function_of_the_step_and_off_by_default(tmp_path):
    split = position_split(tmp_path, clips=3, length=30)
    batches = ClipStarts(PackedClips(split, 1000, 64), 0.5, (5, 10))
    a, b = batches(np.random.default_rng(7), 4), batches(np.random.default_rng(7), 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # A clip shorter than its drawn crop ends on its true end: BOS is its last target.
    short = ClipStarts(PackedClips(split, 1000, 64), 1.0, (40, 40))
    _, labels = short(np.random.default_rng(1), 1)
    assert labels[0, 29] == 29 and labels[0, 30] == 1000 and labels[0, 31] == 0
    assert "start_crops" not in LMConfig().key() and "embeddings" not in LMConfig().key()
    assert LMConfig(start_crops=0.25).key()["crop_codes"] == (20, 40)
    with pytest.raises(ValueError, match="start_crops"):
        LMConfig(start_crops=1.5)
    with pytest.raises(ValueError, match="not multi"):
        LMConfig(start_crops=0.2, objective="multi")


# ---- centroid-initialised embeddings ---------------------------------------------------

def test_centroid_embeddings_keep_distances_and_scale():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(16, 8)) * 3.0 + 5.0
    table = centroid_embeddings(centroids, 32)
    assert table.shape == (16, 32) and table.std() == pytest.approx(0.02, rel=1e-5)
    d_in = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    d_out = np.linalg.norm(table[:, None] - table[None], axis=-1)
    ratio = d_out[d_in > 0] / d_in[d_in > 0]
    assert np.allclose(ratio, ratio[0], rtol=1e-4)  # one scale for every pair


def test_before_training_a_probe_on_layer_0_is_a_probe_on_the_quantised_clips():
    """The centroid-initialised LM's layer 0, mean-pooled, is an affine image of the clip's
    quantised bottleneck (the mean of its codes' centroids) projected: the linear probe ranks
    the clips the same way on both."""
    rng = np.random.default_rng(1)
    k, dim, length = 16, 8, 12
    centroids = rng.normal(size=(k, dim)).astype(np.float32)
    # Two classes of clips drawing codes from overlapping halves of the codebook.
    labels = np.array([i % 2 for i in range(60)])
    clips = [rng.integers(0, 10, length) + 6 * y for y in labels]
    torch.manual_seed(0)
    model = build_gpt2(LMConfig(**TINY, embeddings="centroids"), k)
    assert not model.config.tie_word_embeddings
    assert not torch.equal(model.lm_head.weight[:k], model.transformer.wte.weight[:k])
    init_from_centroids(model, centroids, seed=0)
    lm = CodeLM(model, model.config.tokenlm)
    layer0 = torch.stack([s[0].mean(dim=0) for s in lm.hidden_states(clips)]).numpy()  # (N, width)
    projected = np.stack([centroid_embeddings(centroids, 32)[c].mean(axis=0) for c in clips])
    # Same clip length: positions add one vector to every clip, so the two differ by a constant.
    assert np.allclose(layer0 - projected, (layer0 - projected)[0], atol=1e-5)
    quantised = np.stack([centroids[c].mean(axis=0) for c in clips])  # the quantised row's vectors
    split = {"train": slice(0, 36), "val": slice(36, 48), "test": slice(48, 60)}
    probes = [fit_linear_probe(*((x[s], labels[s]) for s in split.values()), Cs=(1.0,), seed=0)
              for x in (layer0, projected)]
    same = ("accuracy", "macro_f1", "val_accuracy", "best_C")
    assert [getattr(probes[0], f) for f in same] == pytest.approx([getattr(probes[1], f) for f in same])
    # ... and the same as on the quantised clips themselves (an orthonormal projection keeps
    # the clips' geometry; the probe's standardisation makes the scale irrelevant).
    quantised_probe = fit_linear_probe(*((quantised[s], labels[s]) for s in split.values()), Cs=(1.0,), seed=0)
    assert quantised_probe.accuracy > 0.8 and probes[0].accuracy > 0.8


def test_pretrain_starts_from_the_tokenizers_centroids(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    k = RunDir(run).codebook_size
    training = TrainConfig(steps=1, batch_size=2, lr=1e-9, warmup_steps=0, eval_every=1, device="cpu")
    out = pretrain(run, LMConfig(**TINY, embeddings="centroids"), training, progress=False)
    lm = CodeLM.load(out)
    centroids = np.load(RunDir(run).codebook(k) / "codebook.npy")
    table = lm.model.transformer.wte.weight[:k].detach().numpy()
    assert np.allclose(table, centroid_embeddings(centroids, 32), atol=1e-5)  # lr ~0: as initialised
    assert read_json(out / "config.json")["tie_word_embeddings"] is False


def test_centroids_without_a_codebook_is_a_clear_error(tmp_path):
    from stages.test_pretrain import make_token_run  # codes only, no tokenizer

    from tokenlm.core.errors import ArtifactError

    run = make_token_run(tmp_path / "run")
    training = TrainConfig(steps=1, batch_size=2, eval_every=1, device="cpu")
    with pytest.raises(ArtifactError, match="centroids"):
        pretrain(run, LMConfig(**TINY, embeddings="centroids"), training, progress=False)


# ---- reading a clip --------------------------------------------------------------------

def test_reading_twice_keeps_the_second_reading_of_a_causal_lm():
    k = 8
    torch.manual_seed(0)
    model = build_gpt2(LMConfig(**TINY), k)
    lm = CodeLM(model, model.config.tokenlm)
    clip = np.array([1, 2, 3, 4, 5])
    fed = read_codes([clip], "twice")[0]
    assert fed.tolist() == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    states = lm.hidden_states([fed])[0]
    kept = keep_reading(states, "twice")
    assert kept.shape[1] == 5 and torch.equal(kept, states[:, 5:])
    # The second reading's states have seen the whole clip: they differ from the first's.
    once = lm.hidden_states([clip])[0]
    assert torch.allclose(once, states[:, :5], atol=1e-5) and not torch.allclose(once[1:], kept[1:], atol=1e-3)
    assert reading_candidates("auto", "next") == ("once", "twice")
    assert reading_candidates("auto", "masked") == ("once",)
    with pytest.raises(ValueError, match="lm_reading"):
        reading_candidates("thrice", "next")
    assert vocab_layout(k)["bos_token_id"] == k
