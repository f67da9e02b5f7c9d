"""Stage 4 end to end on fabricated tokens: the LM beats count models on structured codes,
loads with plain transformers, resumes bit-identically after kill -9, runs under torchrun
(2 processes, gloo), generates codes, and refuses bad inputs with one clear line."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tokenlm.cli import cli, main
from tokenlm.core.config import build, load_yaml
from tokenlm.core.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.core.fileio import read_json, write_json
from tokenlm.data.store import RaggedSplit, RaggedWriter
from tokenlm.lm.code_lm import CodeLM
from tokenlm.models.gpt import LMConfig, build_gpt2
from tokenlm.pipeline.generate_codes import generate_codes
from tokenlm.pipeline.pretrain import PackedClips, lm_configs, pretrain
from tokenlm.run.artifacts import Stage, keeping_checkpoints
from tokenlm.training import TrainConfig, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
K = 16
TINY = LMConfig(n_layer=2, n_head=2, n_embd=32, context=32, dropout=0.0)
# One thread everywhere: tiny models gain nothing from more, and in-process and subprocess
# runs must use the same count for bit-identical results.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only add sync


def make_token_run(run: Path, k: int = K, clips=(60, 12, 12), seed: int = 0, vocab_in_meta: int | None = None,
                   long_clip: int = 80) -> Path:
    """A run with RUN/tokens/k{k} of structured codes: each clip repeats one of six short motifs
    (3-5 codes drawn from the codebook, shared codes make bigrams ambiguous) from a random
    phase, with 10% of codes replaced by noise. A model that reads the clip so far predicts
    the next code far better than unigram or bigram counts. One train clip is longer than
    the context so crops are exercised."""
    rng = np.random.default_rng(seed)
    motifs = [rng.choice(k, size=int(rng.integers(3, 6)), replace=False) for _ in range(6)]
    stage = Stage(run / "tokens" / f"k{k}", config={"k": k, "seed": seed}, inputs={})
    work = stage.start()
    for split, n in zip(("train", "val", "test"), clips):
        with RaggedWriter(work, split, "uint16") as writer:
            for i in range(n):
                motif = motifs[rng.integers(len(motifs))]
                length = long_clip if (split == "train" and i == 0) else int(rng.integers(25, 45))
                codes = motif[(np.arange(length) + rng.integers(len(motif))) % len(motif)]
                noise = rng.random(length) < 0.1
                codes[noise] = rng.integers(0, k, size=int(noise.sum()))
                writer.add({"id": f"{split}-{i}", "label": f"m{i % 3}"}, codes)
    write_json(work / "meta.json", {"vocab_size": vocab_in_meta or k, "code_rate": 20.0, "sample_rate": 16000,
                                    "samples_per_code": 800, "dtype": "uint16", "tokenizer_hash": "fab"})
    stage.finish()
    (run / "tokenizer").mkdir(parents=True, exist_ok=True)
    write_json(run / "tokenizer" / "current.json", {"codebook_size": k})
    return run


def tiny_training(**changes) -> TrainConfig:
    base = dict(steps=150, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=25, patience=0, log_every=25,
                device="cpu")
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = make_token_run(tmp_path_factory.mktemp("run"))
    torch.set_num_threads(1)
    out = pretrain(run, TINY, tiny_training(), progress=False)
    return run, out


def test_pretrain_outputs_load_with_plain_transformers(trained):
    from transformers import GPT2LMHeadModel

    run, out = trained
    assert out == run / "lm"
    for name in ("config.json", "model.safetensors", "train_log.csv", "metrics.json", "stage.json"):
        assert (out / name).is_file(), name
    model = GPT2LMHeadModel.from_pretrained(out)
    assert model.config.vocab_size == K + 1 and model.config.tokenlm["codebook_size"] == K
    assert model.config.tokenlm["code_rate"] == 20.0
    header = (out / "train_log.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "lr", "loss", "val_loss", "val_ppl", "val_bits_per_s", "tokens_per_s", "elapsed_s"]
    assert not list(run.glob(".lm.partial*"))


def test_lm_beats_unigram_and_bigram(trained):
    run, out = trained
    metrics = read_json(out / "metrics.json")
    assert metrics["val_ppl"] < metrics["bigram_ppl"] < metrics["unigram_ppl"], metrics
    # The logged val loss, metrics.json and CodeLM.perplexity measure the same thing.
    val = [clip for _, clip in RaggedSplit(run / "tokens" / f"k{K}", "val", "uint16")]
    assert CodeLM.load(out, device="cpu").perplexity(val) == pytest.approx(metrics["val_ppl"], rel=1e-4)


def test_rerun_is_up_to_date(trained, capsys):
    run, out = trained
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert pretrain(run, TINY, tiny_training(), progress=False) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing rewritten
    assert "up to date" in capsys.readouterr().err


def test_generate_codes_from_a_prompt_file(trained, tmp_path):
    run, _ = trained
    prompt = tmp_path / "prompt.npy"
    np.save(prompt, np.array([1, 2, 3, 1, 2], dtype=np.int64))
    path = generate_codes(run, prompt_codes=prompt, n=40, temperature=0.8, top_k=5, seed=1, device="cpu")
    codes = np.load(path)
    assert codes.shape == (45,) and codes.dtype == np.int64 and codes.max() < K
    assert list(codes[:5]) == [1, 2, 3, 1, 2]
    info = read_json(path.with_suffix(".json"))
    assert info["prompt_length"] == 5 and info["generated"] == 40
    again = generate_codes(run, prompt_codes=prompt, n=40, temperature=0.8, top_k=5, seed=1, out=tmp_path / "b.npy",
                           device="cpu")
    assert np.array_equal(np.load(again), codes)  # same seed, same codes
    result = CliRunner().invoke(cli, ["generate-codes", str(run), "--prompt-codes", str(prompt), "--n", "3",
                                      "--no-prompt", "--out", str(tmp_path / "c.npy"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "c.npy").shape == (3,)


def test_hidden_states_of_the_trained_model(trained):
    run, out = trained
    lm = CodeLM.load(out, device="cpu")
    states = lm.hidden_states([np.arange(10) % K, np.arange(70) % K])  # 70 > context 32
    assert [tuple(s.shape) for s in states] == [(3, 10, 32), (3, 70, 32)]


def test_packed_batches_start_at_a_clip_and_hold_whole_clip_prefixes(tmp_path):
    run = make_token_run(tmp_path / "run")
    split = RaggedSplit(run / "tokens" / f"k{K}", "train", "uint16")
    clips = {tuple(int(c) for c in clip) for _, clip in split}
    sampler = PackedClips(split, K, 32)
    ids, labels = sampler(np.random.default_rng(0), 64)
    assert ids.shape == labels.shape == (64, 32) and ids.dtype == torch.long
    again = sampler(np.random.default_rng(0), 64)
    assert torch.equal(ids, again[0])  # a function of the generator alone
    rows = torch.cat([ids, labels[:, -1:]], dim=1)  # (B, 33): labels are inputs shifted by one
    assert torch.equal(rows[:, 1:], labels)
    crops = 0
    for row in rows.tolist():
        crops += row[0] != K  # only the long clip (80 > 32 codes) can open a row mid-clip
        bos = [i for i, token in enumerate(row) if token == K]
        for start, end in zip(bos, bos[1:]):  # whole clips between two BOS
            assert tuple(row[start + 1:end]) in clips
    assert 0 < crops < 64


# ---- resume after kill -9 -----------------------------------------------------------------

KILL_MODEL = LMConfig(n_layer=2, n_head=2, n_embd=32, context=32, dropout=0.1)  # dropout: RNG must resume too
KILL_TRAINING = TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=10, log_every=10,
                            device="cpu")


def _slow_pretrain(run: Path) -> None:
    # Slow steps give the parent time to kill this process in the middle of training.
    pretrain(run, KILL_MODEL, KILL_TRAINING, progress=False, callbacks=[lambda step, record: time.sleep(0.05)])


def test_kill_9_then_rerun_ends_with_the_same_weights(tmp_path, capsys):
    import multiprocessing

    reference = make_token_run(tmp_path / "reference")
    interrupted = make_token_run(tmp_path / "interrupted")

    # A forked child: a real separate process to kill -9, without paying a fresh interpreter's
    # torch + transformers import.
    victim = multiprocessing.get_context("fork").Process(target=_slow_pretrain, args=(interrupted,))
    victim.start()
    deadline = time.time() + 90
    while not list(interrupted.glob(".lm.partial-*/ckpt/last.json")) and victim.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    last = next(interrupted.glob(".lm.partial-*/ckpt/last.json"))  # the work folder is named by the stage's key
    time.sleep(0.12)  # a couple of steps past the checkpoint: killed mid-way to the next one
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    assert victim.exitcode == -signal.SIGKILL
    killed_at = load_checkpoint(last)["state"]["step"]
    assert 0 < killed_at < 60 and not (interrupted / "lm").exists()

    capsys.readouterr()
    with keeping_checkpoints():
        pretrain(interrupted, KILL_MODEL, KILL_TRAINING, progress=False)  # the rerun
        assert f"resuming from step {killed_at}" in capsys.readouterr().err
        pretrain(reference, KILL_MODEL, KILL_TRAINING, progress=False)  # straight through

    a, b = load_file(reference / "lm" / "model.safetensors"), load_file(interrupted / "lm" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    # The end-of-run weights too (the saved model holds the best validation step's).
    a = load_checkpoint(reference / "lm" / "ckpt" / "last.json")["model"]
    b = load_checkpoint(interrupted / "lm" / "ckpt" / "last.json")["model"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


# ---- several processes ------------------------------------------------------------------------

# Run by torchrun: each rank trains the same DDP model with the shared loop and saves the
# weights it holds and the validation loss it logged at the last step, then runs the
# pretrain command as a user would under torchrun.
DDP_SCRIPT = """
import sys
from pathlib import Path

import torch

from tokenlm.cli import main
from tokenlm.lm.code_lm import lm_loss
from tokenlm.models.gpt import LMConfig, build_gpt2
from tokenlm.pipeline.pretrain import PackedClips, validation_batches
from tokenlm.data.store import RaggedSplit
from tokenlm.training import TrainConfig, setup_distributed, train

run, out, recipe = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
dist = setup_distributed("cpu")
tokens = run / "tokens" / "k16"
torch.manual_seed(dist.rank)  # different initial weights per rank: DDP must make them one
model = build_gpt2(LMConfig(n_layer=2, n_head=2, n_embd=32, context=32), 16)
val = validation_batches(RaggedSplit(tokens, "val", "uint16"), 16, 32, 8)
config = TrainConfig(steps=6, batch_size=4, warmup_steps=1, eval_every=3, device="cpu")


def save_last_step(step, record):
    if step == config.steps:
        weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
        torch.save({"weights": weights, "val_loss": record["val_loss"], "val_batches": len(val)},
                   out / f"rank{dist.rank}.pt")


train(model, config, out / "work", loss_fn=lm_loss, train_batch=PackedClips(RaggedSplit(tokens, "train", "uint16"), 16, 32),
      val_batches=lambda: val, dist=dist, progress=False, callbacks=[save_last_step])
main(["pretrain", str(run), "--config", recipe, "--device", "cpu", "--no-progress"])
"""


def test_torchrun_two_processes_on_cpu(tmp_path):
    import csv

    run = make_token_run(tmp_path / "run")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent("""
        lm:
          n_layer: 2
          n_head: 2
          n_embd: 32
          context: 32
          training: {steps: 10, batch_size: 8, eval_every: 5, log_every: 5, warmup_steps: 2}
    """))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(script), str(run), str(tmp_path), str(recipe)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr

    # The shared loop: both ranks hold the same weights after every step...
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["weights"].keys() == ranks[1]["weights"].keys()
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    # ...and the validation loss, each rank scoring its share of an odd number of batches and
    # the sums all-reduced, is the single-process loss of those weights on the whole split.
    assert ranks[0]["val_batches"] % 2 == 1 and ranks[0]["val_loss"] == ranks[1]["val_loss"]
    model = build_gpt2(LMConfig(n_layer=2, n_head=2, n_embd=32, context=32), K)
    model.load_state_dict(ranks[0]["weights"])
    model.save_pretrained(tmp_path / "rank0_lm")
    val = [clip for _, clip in RaggedSplit(run / "tokens" / f"k{K}", "val", "uint16")]
    alone = math.log(CodeLM.load(tmp_path / "rank0_lm", device="cpu").perplexity(val))
    assert ranks[0]["val_loss"] == pytest.approx(alone, rel=1e-5)

    # The pretrain command under torchrun: one process reports and writes, and the logged
    # (all-reduced) val loss of the kept step is the saved model's single-process loss.
    assert "2 process(es)" in done.stderr
    assert done.stdout.count("lm: ") == 1
    stage = read_json(run / "lm" / "stage.json")
    assert stage["config"]["training"]["steps"] == 10
    with open(run / "lm" / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10]  # rank 0 alone writes
    best = read_json(run / "lm" / "metrics.json")["best_step"]
    logged = next(float(r["val_loss"]) for r in rows if int(r["step"]) == best)
    assert logged == pytest.approx(math.log(CodeLM.load(run / "lm", device="cpu").perplexity(val)), rel=1e-5)


# ---- configuration and bad inputs -------------------------------------------------------

def test_recipe_section_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lm:\n  n_layer: 3\n  training: {steps: 7, lr: 0.002}\n")
    model, training = lm_configs(load_yaml(recipe)["lm"], {"n_embd": 64, "steps": 9, "batch_size": None})
    assert (model.n_layer, model.n_embd, model.context) == (3, 64, 512)
    assert (training.steps, training.lr, training.batch_size, training.patience) == (9, 0.002, 8, 5)
    recipe.write_text("lm:\n  n_layers: 3\n")
    with pytest.raises(ConfigError, match="unknown option 'lm.n_layers'"):
        lm_configs(load_yaml(recipe)["lm"])


def test_missing_tokens_and_vocab_mismatch(tmp_path):
    with pytest.raises(ArtifactError, match="tokenize"):
        pretrain(tmp_path / "empty", TINY, tiny_training(steps=1))
    run = make_token_run(tmp_path / "run")
    with pytest.raises(ArtifactError, match="tokenize"):
        pretrain(run, TINY, tiny_training(steps=1), k=32)  # no K=32 tokens in this run
    bad = make_token_run(tmp_path / "bad", vocab_in_meta=8)  # codes go up to 15
    with pytest.raises(ArtifactError, match="vocabulary has 8 codes"):
        pretrain(bad, TINY, tiny_training(steps=1), k=None)


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    runner = CliRunner()
    for name in ("pretrain", "generate-codes"):
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", str(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("error:") and "tokenize" in err, err
    with pytest.raises(TokenlmError):
        generate_codes(tmp_path, n=3)


def test_schedule_fits_a_small_corpus_and_leaves_a_large_one_alone():
    from tokenlm.pipeline.pretrain import LM_TRAINING_DEFAULTS, fit_schedule_to_data

    defaults = build(TrainConfig, LM_TRAINING_DEFAULTS)
    small, changed = fit_schedule_to_data(defaults, 9600, 512)  # 706 clips of 1 s: 2.3 passes a step
    assert (small.eval_every, small.warmup_steps) == (3, 9) and changed == {"eval_every": 3, "warmup_steps": 9}
    large, changed = fit_schedule_to_data(defaults, 10_000_000, 512)
    assert large == defaults and not changed


def test_with_cli_defaults_the_lm_matches_the_count_models_on_a_small_set(tmp_path):
    """Issue 21: on a small set the default LM (4 x 256, 512 context, early stopping) must not
    end above the bigram. Before the schedule fitted the data, its first validation came after
    100 steps (~200 passes over these 2.2k codes) and its val perplexity ended above the
    bigram's."""
    from tokenlm.pipeline.pretrain import lm_configs

    run = make_token_run(tmp_path / "run")
    model, training = lm_configs({}, {"device": "cpu"})
    metrics = read_json(pretrain(run, model, training, progress=False) / "metrics.json")
    assert metrics["val_ppl"] <= metrics["bigram_ppl"]
    assert metrics["stopped_early"] and metrics["steps"] < 2000
