"""The ``tokenlm`` command. Thin: every subcommand is a stage of the registry
(tokenlm.pipeline.registry.STAGES), imported only when called, so ``tokenlm --help`` stays fast
(torch loads lazily).

Errors meant for the user (TokenlmError) print as one line and exit 1, and so do the errors
of the machine around a run (a full disk, a read-only or forbidden folder: OSError with one
of ``ENVIRONMENT_ERRNOS``); Ctrl-C exits 130 with a word on resuming. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from tokenlm.core.errors import TokenlmError
from tokenlm.core.fileio import os_error_of
from tokenlm.pipeline.registry import BY_NAME, STAGES


class LazyGroup(click.Group):
    """A click group whose subcommands are the registry's stages, imported on first use."""

    def list_commands(self, ctx):
        return [spec.name for spec in STAGES]

    def get_command(self, ctx, name):
        from tokenlm.cli.options import with_common_options

        spec = BY_NAME.get(name)
        return with_common_options(spec.load_command()) if spec else None

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(spec.name, spec.help) for spec in STAGES])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenlm")
def cli():
    """tokenlm: turn a folder of sounds into discrete tokens, train a language model on them,
    and measure what the tokens keep and lose.

    \b
    Typical run:
      tokenlm data demo --out data/demo
      tokenlm tokenize runs/demo --data data/demo -K 256
      tokenlm pretrain runs/demo
      tokenlm probe runs/demo --baselines vgg,simclr,timbre
    or every stage from a recipe:  tokenlm run recipes/demo.yaml
    """


# OSErrors that say something about the disk or the permissions, not about tokenlm's code.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                      errno.EMFILE, errno.ENFILE}


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="tokenlm", standalone_mode=False)
    except TokenlmError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        click.echo(f"error: {os_error_line(err)}", err=True)
        sys.exit(1)
    except click.exceptions.Abort as err:
        # click turns EOFError into Abort as well as Ctrl-C; a file that ends too early is no
        # interruption, and rerunning would not fix it: show it as the bug it is.
        if isinstance(err.__context__, EOFError):
            raise err.__context__ from None
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
    except Exception as err:  # a library's own error for a failed write (safetensors: a full disk)
        cause = os_error_of(err)
        if not isinstance(cause, OSError) or cause.errno not in ENVIRONMENT_ERRNOS:
            raise
        click.echo(f"error: {os_error_line(cause)}", err=True)
        sys.exit(1)


def os_error_line(err: OSError) -> str:
    """One line for an OSError of the environment: the path, the system's words, what to do."""
    where = f"{err.filename}: " if err.filename else ""
    what = err.strerror or os.strerror(err.errno)
    advice = {errno.ENOSPC: "free some space (or use another folder), then rerun the same command to resume",
              errno.EDQUOT: "free some space (or use another folder), then rerun the same command to resume",
              errno.EFBIG: "the file size limit (ulimit -f) was reached; raise it, then rerun the same command",
              errno.EROFS: "the folder is read-only: write the run somewhere writable"}
    return f"{where}{what} ({advice.get(err.errno, 'check the path and its permissions')})"


if __name__ == "__main__":
    main()
