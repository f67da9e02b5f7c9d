"""``tokenlm data``: build the offline demo dataset, or look at a dataset before a run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from tokenlm.config import build, recipe_section
from tokenlm.datasets import SPLITS, scan_dataset
from tokenlm.pipeline import RunContext
from tokenlm.splits import SplitConfig, assign_splits, link_duplicates


def run(ctx: RunContext) -> None:
    """Build the demo set when the recipe asks for one (data.demo: instruments|speech)."""
    section = ctx.section("data")
    if section.get("demo"):
        from tokenlm.demo import build_demo  # the renderers' imports are only for this

        build_demo(Path(section["path"]), kind=section["demo"], seed=int(section.get("seed", 0)))


@click.group("data")
def command():
    """Datasets: build the demo set, inspect a folder."""


@command.command("demo")
@click.option("--out", "out", type=click.Path(), default="data/demo", show_default=True, help="Where to build it.")
@click.option("--kind", type=click.Choice(["instruments", "speech"]), default="instruments", show_default=True,
              help="Sampled General-MIDI instruments (10 families) or eSpeak NG keywords (10 words).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out, kind, seed):
    """Build the offline demo dataset (deterministic: identical bytes on a rerun)."""
    from tokenlm.demo import build_demo

    summary = build_demo(Path(out), kind=kind, seed=seed)
    state = "up to date" if summary.get("cached") else f"built in {summary.get('build_seconds', 0):.1f} s"
    click.echo(f"{summary['n_clips']} clips, {summary['n_classes']} classes, {summary['seconds'] / 60:.1f} min "
               f"of audio ({state}) -> {out}")


@command.command("info")
@click.argument("path", type=click.Path())
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (section: split).")
@click.option("--allow-outside", is_flag=True, help="Accept manifest paths outside the manifest's folder.")
def info(path, recipe, allow_outside):
    """Show a dataset's layout, classes and the train/val/test split tokenlm would use."""
    skipped: list[dict] = []
    layout, clips = scan_dataset(path, allow_outside=allow_outside, skipped=skipped)
    clips, duplicates = link_duplicates(clips)  # as prepare does (without content hashes)
    clips = assign_splits(clips, build(SplitConfig, recipe_section(recipe, "split"), where="split"))
    per_split = Counter(c.split for c in clips)
    labels = Counter(c.label for c in clips)
    groups = {c.group for c in clips if c.group}
    click.echo(f"{path}: layout {layout}, {len(clips)} clips, {len(labels)} classes, {len(groups)} groups")
    click.echo("splits: " + ", ".join(f"{s} {per_split.get(s, 0)}" for s in SPLITS))
    for label, n in sorted(labels.items(), key=lambda kv: str(kv[0])):
        click.echo(f"  {label}: {n}")
    if duplicates:
        click.echo(f"{len(duplicates)} file(s) listed under more than one id, e.g. {', '.join(duplicates[0])}")
    if skipped:
        click.echo(f"{len(skipped)} entries skipped, e.g. {skipped[0]['path']}: {skipped[0]['reason']}")
