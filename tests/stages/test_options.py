"""The training options that pretrain and vocoder share: defined once, each stage's defaults shown."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli as tokenlm


@pytest.mark.parametrize("name, steps, eval_every", [("pretrain", 2000, 100), ("vocoder", 20000, 500)])
def test_each_command_shows_its_own_defaults(name, steps, eval_every, capsys):
    assert tokenlm(name, "--help") == 0
    out = " ".join(capsys.readouterr().out.split())  # help text unwrapped
    for option in ("--steps", "--batch-size", "--lr", "--warmup-steps", "--eval-every", "--patience", "--seed",
                   "--device", "--no-progress"):
        assert option in out
    assert f"early stopping). [{steps}]" in out and f"checkpoints. [{eval_every}]" in out
