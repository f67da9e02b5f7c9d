"""Every option's help shows its default, and a default that is a config's comes from that
config: changing a dataclass default changes the help, and no number is typed twice."""

from __future__ import annotations

import re

import click
import pytest

from tokenlm.cli.options import shown
from tokenlm.pipeline.registry import STAGES

BRACKET = re.compile(r"\[([^\]]*)\]\s*$")
NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


def options():
    """(command path, option) of every option of every command, subcommands of groups included."""
    found = []

    def walk(command, path):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help", "version"):
                found.append((path, param))

    for spec in STAGES:
        walk(spec.load_command(), spec.name)
    return found


ALL = options()


def given_default(option: click.Option):
    """The option's own default, None when it has none (click's UNSET sentinel, or a callable)."""
    default = option.default
    if default is None or callable(default) or getattr(default, "name", None) == "UNSET":
        return None
    return default


@pytest.mark.parametrize("path,option", ALL, ids=[f"{p} {o.opts[-1]}" for p, o in ALL])
def test_every_option_shows_its_default(path, option):
    if option.required:
        pytest.skip("required: no default")
    assert option.help and BRACKET.search(option.help), f"tokenlm {path} {option.opts[-1]}: no [default] in its help"


@pytest.mark.parametrize("path,option", ALL, ids=[f"{p} {o.opts[-1]}" for p, o in ALL])
def test_a_shown_default_is_read_from_where_it_is_set(path, option):
    """A number in brackets is the option's config field's default or its own click default,
    never a hand-typed copy."""
    shown_default = BRACKET.search(option.help or "")
    if shown_default is None:
        pytest.skip("no default shown (the test above fails)")
    text = shown_default.group(1)
    source = getattr(option, "config_default", None)
    if source is not None:
        config, field = source
        value = getattr(config() if isinstance(config, type) else config, field)
        assert text == shown(value), f"{path} {option.opts[-1]}: help says [{text}], {field} is {value!r}"
    elif given_default(option) is not None:
        assert text == shown(given_default(option)), f"{path} {option.opts[-1]}: help says [{text}], default {option.default!r}"
    else:
        assert not NUMBER.fullmatch(text), (f"{path} {option.opts[-1]}: [{text}] is typed by hand: use "
                                            "config_option (a config's field) or default_option")


def test_the_help_follows_the_config():
    """A default that moves moves the help with it: nothing to keep in step by hand."""
    import dataclasses

    from tokenlm.cli.options import config_option
    from tokenlm.models.gpt import LMConfig

    @click.command()
    @config_option("--n-layer", type=int, config=dataclasses.replace(LMConfig(), n_layer=7), field="n_layer",
                   help="Transformer blocks.")
    def command(n_layer):
        pass

    assert command.params[0].help == "Transformer blocks. [7]"
    assert command.params[0].config_default[1] == "n_layer"
