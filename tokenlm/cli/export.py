"""`tokenlm export`: the command line of tokenlm.pipeline.export (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.pipeline.export import FORMATS, export


@click.command("export")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="units: GSLM unit files; hf: a datasets DatasetDict (hf extra); npy: one .npy per clip.")
@click.option("-K", "--codebook-size", type=int, help="Codebook size. [the run's current K, else the only one]")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder. [RUN/export/FORMAT/kK]")
def command(run, fmt, codebook_size, out):
    """Write RUN's codes (and each task's) as unit files, an HF dataset or .npy files.

    \b
      tokenlm export runs/demo --format units
    """
    target = export(run, fmt, codebook_size, out)
    click.echo(f"codes exported as {fmt}: {target}")
