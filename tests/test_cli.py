"""The ``tokenlm`` command: every registered subcommand has --help; errors are one line."""

from __future__ import annotations

import sys
import types

import click
import pytest

from tokenlm.cli import main
from tokenlm.core.errors import TokenlmError
from tokenlm.pipeline import registry as pipeline
from tokenlm.pipeline.registry import BY_NAME, StageSpec

# Every command, in the order `tokenlm --help` lists them (pipeline order). Written out rather
# than read from the CLI, so that a command whose module went missing cannot drop out unseen.
EXPECTED_COMMANDS = ("data", "prepare", "tokenize", "pretrain", "generate-codes", "baselines", "probe", "vocoder",
                     "rawlm", "decode", "generate", "sweep", "scale", "export", "publish", "report", "run")


def run(argv, capsys):
    """main(argv) -> (exit code, stdout, stderr); main returns (code 0) or sys.exit()s."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and out.startswith("Usage: tokenlm")
    section = out.split("\nCommands:\n", 1)[1]
    listed = [line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.strip()]
    assert tuple(listed) == EXPECTED_COMMANDS


@pytest.mark.parametrize("name", EXPECTED_COMMANDS)
def test_every_subcommand_imports_and_has_help(name, capsys):
    code, out, err = run([name, "--help"], capsys)
    assert code == 0, err
    assert out.startswith(f"Usage: tokenlm {name}")
    assert "--help" in out
    # (-h is not checked per subcommand: click caches a command's help option the first time
    # it builds a context, so a test elsewhere that invokes the command on its own, outside
    # the group, takes -h away for the rest of the session. Users never meet this.)


def test_short_help_at_the_top(capsys):
    code, out, _ = run(["-h"], capsys)
    assert code == 0 and out.startswith("Usage: tokenlm")


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and "0." in out


def test_user_error_is_one_line_and_exit_1(capsys, tmp_path):
    code, out, err = run(["prepare", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert err == f"error: data not found: {tmp_path / 'missing'}\n"
    code, _, err = run(["prepare"], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: need RUN and --data")


def test_usage_errors_exit_2(capsys):
    code, _, err = run(["no-such-command"], capsys)
    assert code == 2 and "No such command" in err
    code, _, err = run(["prepare", "--no-such-option"], capsys)
    assert code == 2 and "No such option" in err


def test_ctrl_c_exits_130_with_a_word_on_resuming(capsys, monkeypatch, tmp_path):
    import tokenlm.pipeline.prepare as prepare_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "prepare", interrupted)
    code, _, err = run(["prepare", "--data", str(tmp_path), "--out", str(tmp_path / "run")], capsys)
    assert code == 130 and "rerun the same command to resume" in err
    assert "Traceback" not in err


def test_a_tokenlm_error_raised_anywhere_in_a_command_is_one_line(capsys, monkeypatch):
    @click.command("boom")
    def boom():
        raise TokenlmError("it broke: because")

    module = types.ModuleType("tokenlm.cli.boom")
    module.command = boom
    monkeypatch.setitem(sys.modules, "tokenlm.cli.boom", module)  # the command module load_command imports
    monkeypatch.setitem(BY_NAME, "boom", StageSpec("boom", "tokenlm.pipeline.registry.boom", "test command", pipeline=False))
    code, _, err = run(["boom"], capsys)
    assert code == 1 and err == "error: it broke: because\n"



def test_top_level_help_imports_no_stage_module(capsys, monkeypatch):
    imported = []
    real_import = pipeline.importlib.import_module

    def recording_import(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(pipeline.importlib, "import_module", recording_import)
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "prepare" in out
    assert imported == []
