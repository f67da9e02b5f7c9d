"""``tokenlm data``: build the offline demo dataset, or look at a dataset before a run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from tokenlm.config import build, recipe_section
from tokenlm.datasets import SPLITS, scan_dataset
from tokenlm.errors import ConfigError
from tokenlm.pipeline import RunContext
from tokenlm.splits import SplitConfig, assign_splits, link_duplicates


def run(ctx: RunContext) -> None:
    """Build the offline data a recipe asks for and does not have yet: ``data.demo``
    (instruments|speech|pitch at ``data.path``), the pretraining corpus (``pretrain.path``
    with ``pretrain.corpus_hours``) and each demo task (``tasks.<name>: {path, demo}``)."""
    section = ctx.section("data")
    if section.get("demo"):
        from tokenlm.demo import build_demo  # the renderers' imports are only for this

        build_demo(Path(section["path"]), kind=section["demo"], seed=int(section.get("seed", 0)))
    _build_corpus(ctx.section("pretrain"), where=f"{ctx.recipe_path}: pretrain")
    tasks = ctx.recipe.get("tasks")
    if isinstance(tasks, dict):  # (a list of paths names no demo to build)
        _build_tasks(tasks, where=f"{ctx.recipe_path}: tasks")


def _build_corpus(pretrain: dict, where: str) -> None:
    """Render the corpus when ``corpus_hours`` is given and ``path`` (one path) is missing or
    an unfinished or outdated corpus build (which is then resumed or extended)."""
    hours, path = pretrain.get("corpus_hours"), pretrain.get("path")
    if hours is None or not isinstance(path, (str, Path)):  # a list of paths: never built
        return
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not hours > 0:
        raise ConfigError(f"{where}.corpus_hours must be a positive number of hours, got {hours!r}")
    from tokenlm.demo.corpus import build_corpus, is_corpus_build

    if Path(path).exists() and not is_corpus_build(Path(path)):
        return  # someone's own audio: use it as it is
    build_corpus(Path(path), hours=hours, seed=pretrain.get("corpus_seed", 0),
                 noise=bool(pretrain.get("corpus_noise", False)),
                 reverb=bool(pretrain.get("corpus_reverb", False)), progress=False)


def _build_tasks(tasks: dict, where: str) -> None:
    """Build each ``tasks.<name>`` that names a ``demo`` kind, when its ``path`` is missing
    or holds a demo build (reused as it is when its parameters match)."""
    for name, task in tasks.items():
        if not isinstance(task, dict) or not task.get("demo"):
            continue  # a path alone, or a dataset of the user's own
        if not task.get("path"):
            raise ConfigError(f"{where}.{name}: a demo task needs a path")
        path = Path(task["path"])
        if path.exists() and not (path / "demo.json").is_file():
            continue  # not a demo build: never replace it
        from tokenlm.demo import build_demo

        build_demo(path, kind=task["demo"], seed=int(task.get("seed", 0)), progress=False)


@click.group("data")
def command():
    """Datasets: build the demo set, inspect a folder, pack one into tar shards."""


@command.command("demo")
@click.option("--out", "out", type=click.Path(), default="data/demo", help="Where to build it. [data/demo]")
@click.option("--kind", type=click.Choice(["instruments", "speech", "pitch"]), default="instruments",
              help="Sampled General-MIDI instruments (10 families), eSpeak NG keywords (10 words) or "
                   "single GM notes (12 pitch classes). [instruments]")
@click.option("--seed", type=int, default=0, help="Seed of what is drawn. [0]")
def demo(out, kind, seed):
    """Build the offline demo dataset (deterministic: identical bytes on a rerun)."""
    from tokenlm.demo import build_demo

    summary = build_demo(Path(out), kind=kind, seed=seed)
    state = "up to date" if summary.get("cached") else f"built in {summary.get('build_seconds', 0):.1f} s"
    click.echo(f"{summary['n_clips']} clips, {summary['n_classes']} classes, {summary['seconds'] / 60:.1f} min "
               f"of audio ({state}) -> {out}")


@command.command("corpus")
@click.option("--hours", type=float, required=True, help="Hours of audio to render.")
@click.option("--out", "out", type=click.Path(), default="data/corpus", help="Where to build it. [data/corpus]")
@click.option("--seed", type=int, default=0, help="Seed of what is drawn. [0]")
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
@click.option("--clips-per-shard", type=int, default=1000, help="Clips in each .tar shard. [1000]")
@click.option("--allow-outside", is_flag=True, help="Accept manifest paths outside the manifest's folder. [off]")
def pack(path, out, clips_per_shard, allow_outside):
    """Pack a dataset (any layout) into WebDataset tar shards: <id>.<ext> + <id>.json (label, group,
    fold, split) per clip, files as they are; tokenlm reads the folder (or a glob of it) in place."""
    from tokenlm.webdataset import pack_shards

    summary = pack_shards(path, Path(out), clips_per_shard, allow_outside=allow_outside)
    click.echo(f"{summary['clips']} clips in {summary['shards']} shard(s) -> {out}")
    if summary["skipped"]:
        first = summary["skipped"][0]
        click.echo(f"{len(summary['skipped'])} entries skipped, e.g. {first['path']}: {first['reason']}")


@command.command("info")
@click.argument("path", type=click.Path())
@click.option("--config", "recipe", type=click.Path(), help="Recipe YAML (section: split).")
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
