"""``tokenlm data``: build the offline demo dataset, or look at a dataset before a run."""

from __future__ import annotations

from pathlib import Path

from tokenlm.core.errors import ConfigError
from tokenlm.pipeline.registry import RunContext


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
