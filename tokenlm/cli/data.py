"""`tokenlm data`: the command line of tokenlm.pipeline.data (options in, library call out)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from tokenlm.cli.options import default_option
from tokenlm.core.config import build, recipe_section
from tokenlm.data.clips import SPLITS
from tokenlm.data.layouts import scan_dataset
from tokenlm.data.splits import SplitConfig, assign_splits, link_duplicates


@click.group("data")
def command():
    """Datasets: build the demo set, inspect a folder, pack one into tar shards."""


@command.command("demo")
@default_option("--out", "out", type=click.Path(), default="data/demo", help="Where to build it.")
@default_option("--kind", type=click.Choice(["instruments", "speech", "pitch"]), default="instruments",
              help="Sampled General-MIDI instruments (10 families), eSpeak NG keywords (10 words) or "
                   "single GM notes (12 pitch classes).")
@default_option("--seed", type=int, default=0, help="Seed of what is drawn.")
def demo(out, kind, seed):
    """Build the offline demo dataset (deterministic: identical bytes on a rerun)."""
    from tokenlm.demo import build_demo

    summary = build_demo(Path(out), kind=kind, seed=seed)
    state = "up to date" if summary.get("cached") else f"built in {summary.get('build_seconds', 0):.1f} s"
    click.echo(f"{summary['n_clips']} clips, {summary['n_classes']} classes, {summary['seconds'] / 60:.1f} min "
               f"of audio ({state}) -> {out}")


@command.command("corpus")
@click.option("--hours", type=float, required=True, help="Hours of audio to render.")
@default_option("--out", "out", type=click.Path(), default="data/corpus", help="Where to build it.")
@default_option("--seed", type=int, default=0, help="Seed of what is drawn.")
@click.option("--noise", is_flag=True, help="Add white, pink or brown noise to half of the files. [off]")
@click.option("--reverb", is_flag=True, help="Add synthetic room reverberation to half of the files. [off]")
@click.option("--workers", type=int, help="Rendering processes; files do not depend on it. [one per CPU]")
def corpus(hours, out, seed, noise, reverb, workers):
    """Render an unlabelled pretraining corpus (music, drums, speech, mixes) offline.

    Deterministic (identical bytes on a rerun), resumable (a rerun skips finished files)
    and disjoint from the demo tasks' clips; see data/README.md.
    """
    from tokenlm.demo.corpus import build_corpus

    summary = build_corpus(Path(out), hours=hours, seed=seed, noise=noise, reverb=reverb, workers=workers)
    state = "up to date" if summary["cached"] else f"built in {summary['build_seconds']:.1f} s"
    click.echo(f"{summary['n_files']} files, {summary['seconds'] / 3600:.2f} h of audio ({state}) -> {out}")


@command.command("pack")
@click.argument("path", type=click.Path())
@click.option("--out", "out", type=click.Path(), required=True, help="A new folder for the shards.")
@default_option("--clips-per-shard", type=int, default=1000, help="Clips in each .tar shard.")
@click.option("--allow-outside", is_flag=True, help="Accept manifest paths outside the manifest's folder. [off]")
def pack(path, out, clips_per_shard, allow_outside):
    """Pack a dataset (any layout) into WebDataset tar shards: <id>.<ext> + <id>.json (label, group,
    fold, split) per clip, files as they are; tokenlm reads the folder (or a glob of it) in place."""
    from tokenlm.data.pack import pack_shards

    summary = pack_shards(path, Path(out), clips_per_shard, allow_outside=allow_outside)
    click.echo(f"{summary['clips']} clips in {summary['shards']} shard(s) -> {out}")
    if summary["skipped"]:
        first = summary["skipped"][0]
        click.echo(f"{len(summary['skipped'])} entries skipped, e.g. {first['path']}: {first['reason']}")


@command.command("info")
@click.argument("path", type=click.Path())
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (section: split). [none]")
@click.option("--allow-outside", is_flag=True, help="Accept manifest paths outside the manifest's folder. [off]")
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
