"""Multi-node training as the README writes it: `torchrun --nnodes ... --rdzv-backend c10d`
(here one node, two processes, the rendezvous on a loopback port, gloo on CPU) trains the same
LM as one process given the same global batch.

What "the same global batch" is in this code: ``batch_size`` is per process, and rank r of a
step draws its rows from ``batch_rng(seed, r, step)``. So a 2-process run's step trains on
rank 0's rows followed by rank 1's; a single process with twice the batch size would draw other
rows (its stream is rank 0's alone), and is therefore not the reference. The reference is one
process stepping on exactly those concatenated rows through the same loop.

What DDP promises then: each rank's loss is the mean over its rows, the gradients are averaged
over the ranks, and every sequence of a packed batch holds ``context`` targets, so the averaged
gradient is the gradient of the mean over all rows: the same update, up to the order in which
floats are summed. Measured here: after 6 steps the weights agree to 1.5e-6 (they moved
1.2e-2 from their initial values; one process with batch size 2 x 4, which draws other rows,
ends 2e-2 away), so 1e-5 is allowed; the logged losses agree to the 6 significant digits the
log keeps.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.stages.test_pretrain import K, make_token_run
from tokenlm.data.store import RaggedSplit
from tokenlm.lm.code_lm import lm_loss
from tokenlm.models.gpt import LMConfig, build_gpt2
from tokenlm.pipeline.pretrain import PackedClips, count_targets
from tokenlm.training import DistContext, TrainConfig, batch_rng, train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
WORLD, PER_RANK, STEPS, SEED = 2, 4, 6, 0
MODEL = LMConfig(n_layer=2, n_head=2, n_embd=32, context=32, dropout=0.0)  # no dropout: its masks are per rank
RECIPE = f"""
lm:
  n_layer: 2
  n_head: 2
  n_embd: 32
  context: 32
  training: {{steps: {STEPS}, batch_size: {PER_RANK}, lr: 0.003, warmup_steps: 2, eval_every: {STEPS},
              log_every: 1, patience: 0, seed: {SEED}}}
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class RanksConcatenated:
    """The global batch of a ``WORLD``-process run as one process's batch: at step s the rows
    that rank 0, 1, ... draw from ``batch_rng(SEED, rank, s)``, one after the other. The loop
    draws steps 1, 2, ... in order (a fresh run), so counting calls gives the step."""

    def __init__(self, packed: PackedClips):
        self.packed, self.step = packed, 0

    def __call__(self, rng, batch_size: int):
        self.step += 1
        parts = [self.packed(batch_rng(SEED, rank, self.step), PER_RANK) for rank in range(WORLD)]
        return tuple(torch.cat(tensors) for tensors in zip(*parts))


def single_process_reference(run: Path, work: Path) -> tuple[dict, list[float]]:
    """Final weights and per-step training losses of one process on the concatenated rows,
    the model built as ``pretrain`` builds it."""
    tokens = RaggedSplit(run / "tokens" / f"k{K}", "train", "uint16")
    torch.manual_seed(SEED)
    model = build_gpt2(MODEL, K)
    losses = []
    config = TrainConfig(steps=STEPS, batch_size=WORLD * PER_RANK, lr=0.003, warmup_steps=2, eval_every=STEPS,
                         log_every=1, seed=SEED, device="cpu")
    train(model, config, work, loss_fn=lm_loss, train_batch=RanksConcatenated(PackedClips(tokens, K, MODEL.context)),
          count_items=count_targets, dist=DistContext.single("cpu"), progress=False,
          callbacks=[lambda step, record: losses.append(record["loss"])])
    return {name: value.detach().clone() for name, value in model.state_dict().items()}, losses


def test_pretrain_through_the_c10d_rendezvous_matches_one_process_on_the_same_global_batch(tmp_path):
    run = make_token_run(tmp_path / "run")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(RECIPE))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(WORLD),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{free_port()}", "--rdzv-id", "test",
               "-m", "tokenlm", "pretrain", str(run), "--config", str(recipe), "--device", "cpu", "--no-progress"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{WORLD} process(es)" in done.stderr and done.stdout.count("lm: ") == 1

    weights, losses = single_process_reference(run, tmp_path / "reference")
    # One evaluation, at the last step: the saved model holds the last step's weights.
    ddp = load_file(run / "lm" / "model.safetensors")
    assert ddp.keys() <= weights.keys()
    for name, value in ddp.items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=1e-5, msg=name)
    # The logged loss of a step is the mean over both ranks' rows: the reference's loss.
    with open(run / "lm" / "train_log.csv", newline="") as f:
        logged = [float(row["loss"]) for row in csv.DictReader(f)]
    assert logged == pytest.approx(losses, rel=1e-5)


def test_a_single_process_with_the_global_batch_size_draws_other_rows(tmp_path):
    # Why the reference above concatenates the ranks' rows: 2 x (B/2) is not 1 x B here.
    run = make_token_run(tmp_path / "run")
    packed = PackedClips(RaggedSplit(run / "tokens" / f"k{K}", "train", "uint16"), K, MODEL.context)
    ranks = RanksConcatenated(packed)(None, WORLD * PER_RANK)[0]
    alone = packed(batch_rng(SEED, 0, 1), WORLD * PER_RANK)[0]
    assert torch.equal(alone[:PER_RANK], ranks[:PER_RANK])  # rank 0's rows open both
    assert not torch.equal(alone, ranks)
