"""`tokenlm report`: the command line of tokenlm.pipeline.report (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.pipeline.report import write_report


@click.command("report")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
def command(run):
    """Rebuild RUN/report.md and RUN/report.html (with audio players) from the run's artifacts."""
    report = write_report(run)
    click.echo(f"report: {report}\nhtml: {report.with_suffix('.html')}")
