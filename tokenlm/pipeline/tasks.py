"""Labelled tasks, probed with a run's frozen models.

A run pretrains its self-supervised models (autoencoder, codebooks, code LM, SimCLR, vocoder)
on its pretraining corpus, RUN/features, labelled or not. A *task* is a labelled dataset on
which those frozen models are judged: its clips get log-mel computed exactly as the corpus's
were, codes from the run's tokenizer, supervised baselines of their own and a probe. A task
lives in a run folder of its own, RUN/tasks/<name>/, so nothing a self-supervised stage reads
holds a task's labels or its test audio, and a task added later is probed without training
anything self-supervised again.

A run without tasks (a single-dataset recipe) is its own task: its features are both the
pretraining corpus (the train split) and the task.

    tasks:                       # recipe section: name -> dataset (any layout tokenlm reads)
      instruments: {path: data/demo, demo: instruments}
      keywords: data/speech      # a path alone is enough
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.run.rundir import RunDir, is_finished, read_feature_meta

SECTION = "tasks"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Task:
    """One labelled dataset probed with a run's models."""

    name: str
    data: RunDir  # the run folder with the task's features, codes and supervised baselines
    path: str | None = None  # the labelled dataset; None: the run's own features

    @property
    def is_own(self) -> bool:
        """The run's own data (a single-dataset run): nothing to prepare or encode."""
        return self.path is None


def own_task(run: RunDir) -> Task:
    """The run's own data as a task, named after its dataset (data/esc50 -> esc50)."""
    if not is_finished(run.features):
        raise ArtifactError(f"{run.root} has no features: run `tokenlm prepare --data DIR --out {run.root}` first")
    source = read_feature_meta(run.features).raw.get("data") or "data"
    name = Path(str(source).split(",")[0]).stem or "data"
    return Task(_safe_name(name), run)


def task_at(run: RunDir, path: str | Path, name: str | None = None) -> Task:
    """The dataset at ``path`` as a task of ``run`` (named after its folder or file by default)."""
    name = name or Path(str(path).rstrip("/")).stem
    if not _NAME.fullmatch(name):
        raise ConfigError(f"task name {name!r}: use letters, digits, '.', '_' or '-' (and start with a letter or digit)")
    return Task(name, run.task(name), str(path))


def recipe_tasks(run: RunDir, section: Mapping[str, Any] | list | None) -> list[Task]:
    """The recipe's ``tasks:`` section: a mapping name -> path (or -> {path: ...}), or a list of paths."""
    if not section:
        return []
    if isinstance(section, list):
        return _unique([task_at(run, path) for path in section])
    if not isinstance(section, dict):
        raise ConfigError("the 'tasks' section must map task names to datasets (or list dataset paths)")
    tasks = []
    for name, spec in section.items():
        path = spec.get("path") if isinstance(spec, dict) else spec
        if not path:
            raise ConfigError(f"tasks.{name}: needs a path (the labelled dataset)")
        tasks.append(task_at(run, path, str(name)))
    return _unique(tasks)


def run_tasks(run: RunDir, section: Mapping[str, Any] | list | None = None) -> list[Task]:
    """The tasks a run is judged on: the recipe's, else those the run already holds
    (RUN/tasks/*), else the run's own data."""
    tasks = recipe_tasks(run, section)
    if tasks:
        return tasks
    held = [Task(name, run.task(name), str(_task_source(run.task(name)))) for name in run.task_names()]
    return held or [own_task(run)]


def _task_source(task_run: RunDir) -> str:
    return read_feature_meta(task_run.features).raw.get("data") or str(task_run.root)


def _unique(tasks: list[Task]) -> list[Task]:
    seen: dict[str, Task] = {}
    for task in tasks:
        if task.name in seen:
            raise ConfigError(f"two tasks are named {task.name!r} ({seen[task.name].path} and {task.path}): "
                              "name them in the recipe's tasks section")
        seen[task.name] = task
    return tasks


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return name or "data"
