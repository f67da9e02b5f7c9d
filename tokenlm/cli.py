"""The ``tokenlm`` command. Thin: each subcommand lives beside its stage in tokenlm/stages/
and is imported only when called, so ``tokenlm --help`` stays fast (torch loads lazily).

Errors meant for the user (TokenlmError) print as one line and exit 1; Ctrl-C exits 130
with a word on resuming. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from tokenlm.errors import TokenlmError

# name -> ("module:attribute" of a click command, one-line help). The help lives here so
# that `tokenlm --help` lists the commands without importing them. Pipeline order.
COMMANDS = {
    "data": ("tokenlm.stages.data:data", "Build the demo dataset; inspect a dataset."),
    "prepare": ("tokenlm.stages.prepare:command", "Manifest + log-mel features of a dataset."),
    "tokenize": ("tokenlm.stages.tokenize:command", "Train autoencoder + codebook, encode every clip."),
    "pretrain": ("tokenlm.stages.pretrain:command", "Train the GPT code language model."),
    "generate-codes": ("tokenlm.stages.generate_codes:command", "Continue codes with the LM."),
    "baselines": ("tokenlm.stages.baselines:command", "Train the probe's CNN and SimCLR baselines."),
    "probe": ("tokenlm.stages.probe:command", "Linear probes and baselines, one table."),
    "vocoder": ("tokenlm.stages.vocoder:command", "Train the WaveNet decoder on (audio, codes)."),
    "decode": ("tokenlm.stages.vocoder:decode_command", "Audio -> codes -> audio."),
    "generate": ("tokenlm.stages.vocoder:generate_command", "Continue audio with the LM and the WaveNet."),
    "sweep": ("tokenlm.stages.sweep:command", "Information loss against codebook size."),
    "report": ("tokenlm.stages.report:command", "Rebuild RUN/report.md."),
    "run": ("tokenlm.stages.run:command", "Every stage of a recipe, cached, then the report."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        module_name, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0].split(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenlm")
def cli():
    """tokenlm: turn a folder of sounds into discrete tokens, train a language model on them,
    and measure what the tokens keep and lose.

    \b
    Typical run:
      tokenlm data demo --out data/demo
      tokenlm tokenize --data data/demo --out runs/demo -K 256
      tokenlm pretrain runs/demo
      tokenlm probe runs/demo --baselines vgg,simclr,timbre
    or every stage from a recipe:  tokenlm run recipes/demo.yaml
    """


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="tokenlm", standalone_mode=False)
    except TokenlmError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("interrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: rerun the same command to resume", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
