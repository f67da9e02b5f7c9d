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


def test_every_command_takes_no_progress_and_it_silences_every_bar(tmp_path, capsys):
    from tokenlm.cli import cli
    from tokenlm.core.progress import progress_bar
    from tokenlm.pipeline.registry import STAGES

    for spec in STAGES:
        command = cli.get_command(None, spec.name)
        assert "--no-progress" in [opt for param in command.params for opt in getattr(param, "opts", [])], spec.name
    from tests.conftest import run_cli, write_corpus

    corpus = write_corpus(tmp_path / "corpus", labels=1, groups=1, clips=2)
    capsys.readouterr()
    assert run_cli("prepare", tmp_path / "with_bars", "--data", corpus) == 0
    assert "features: 2/2 clip" in capsys.readouterr().err  # off a terminal: a plain line per bar
    assert run_cli("prepare", tmp_path / "run", "--data", corpus, "--no-progress") == 0
    err = capsys.readouterr().err
    assert "features: 2/2 clip" not in err and "2 clips ok" in err
    bar = progress_bar(range(3), desc="after")  # the switch is back on once the command returns
    assert not bar.disable
    bar.close()
