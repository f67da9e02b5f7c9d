"""The stage registry: one declaration per command, from which the CLI and ``tokenlm run``
are derived; and RunContext, what every stage is run with.

Adding a stage means writing two modules and one line in ``STAGES``:

- ``tokenlm/pipeline/NAME.py``: the stage's work as plain functions (the Python API), and
  ``run(ctx)`` for stages of the pipeline, the stage driven by a recipe (``tokenlm run``);
- ``tokenlm/cli/NAME.py``: ``command``, its click command (``tokenlm NAME --help``), which
  parses options and calls the library.

Modules are imported only when their command runs, so ``tokenlm --help`` stays fast: the
one-line help lives here, not in the module.
"""

from __future__ import annotations

import importlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, TypeVar

from tokenlm.core.config import build, load_yaml
from tokenlm.core.errors import ConfigError
from tokenlm.core.tracking import logging_to
from tokenlm.run.artifacts import keeping_checkpoints
from tokenlm.run.rundir import RunDir

T = TypeVar("T")


@dataclass(frozen=True)
class StageSpec:
    name: str  # the command, and the stage's name in a recipe's `stages:` list
    module: str  # tokenlm.pipeline.registry.<module>: holds `command` (and `run` when in the pipeline)
    help: str  # one line for `tokenlm --help`
    pipeline: bool = True  # a step of `tokenlm run` (False: a tool command such as decode)

    def load(self) -> ModuleType:
        """The stage's library module (its functions, and ``run(ctx)``)."""
        return importlib.import_module(self.module)

    def load_command(self):
        """The stage's click command: ``command`` of tokenlm.cli.<module>."""
        return importlib.import_module("tokenlm.cli." + self.module.rsplit(".", 1)[1]).command


# In pipeline order: `tokenlm run` runs the pipeline stages in this order, `tokenlm --help`
# lists every command in it.
STAGES = (
    StageSpec("data", "tokenlm.pipeline.data", "Build the demo dataset; inspect a dataset."),
    StageSpec("prepare", "tokenlm.pipeline.prepare", "Manifest + log-mel features of a dataset."),
    StageSpec("tokenize", "tokenlm.pipeline.tokenize", "Train autoencoder + codebook, encode every clip."),
    StageSpec("pretrain", "tokenlm.pipeline.pretrain", "Train the GPT code language model."),
    StageSpec("generate-codes", "tokenlm.pipeline.generate_codes", "Continue codes with the LM.", pipeline=False),
    StageSpec("baselines", "tokenlm.pipeline.baselines", "Train the probe's CNN and SimCLR baselines."),
    StageSpec("probe", "tokenlm.pipeline.probe", "Linear probes and baselines, one table."),
    StageSpec("vocoder", "tokenlm.pipeline.vocoder", "Train the WaveNet decoder on (audio, codes)."),
    StageSpec("rawlm", "tokenlm.pipeline.rawlm", "Next-sample prediction on raw audio: transformer vs WaveNet."),
    StageSpec("decode", "tokenlm.pipeline.decode", "Audio -> codes -> audio.", pipeline=False),
    StageSpec("generate", "tokenlm.pipeline.generate", "Continue audio with the LM and the WaveNet.", pipeline=False),
    StageSpec("sweep", "tokenlm.pipeline.sweep", "Information loss against codebook size."),
    StageSpec("scale", "tokenlm.pipeline.scale", "Probe accuracy against pretraining hours."),
    StageSpec("export", "tokenlm.pipeline.export", "Codes as GSLM unit files, an HF dataset or .npy.", pipeline=False),
    StageSpec("publish", "tokenlm.pipeline.publish", "A run's tokenizer, LM and vocoder as one shareable folder.",
              pipeline=False),
    StageSpec("report", "tokenlm.pipeline.report", "Rebuild RUN/report.md.", pipeline=False),
    StageSpec("run", "tokenlm.pipeline.run", "Every stage of a recipe, cached, then the report.", pipeline=False),
)

BY_NAME = {spec.name: spec for spec in STAGES}
PIPELINE = tuple(spec.name for spec in STAGES if spec.pipeline)


@dataclass
class RunContext:
    """What every stage is run with: the run directory, the recipe, the device, progress.

    ``config(cls, section, overrides)`` builds a stage's config from the recipe section
    layered under command-line overrides (None values fall through), so each stage builds its
    config one way whether called from its command or from ``tokenlm run``.
    """

    run: RunDir
    recipe: Mapping[str, Any] = field(default_factory=dict)  # the recipe's sections
    recipe_path: Path | None = None
    device: str | None = None
    progress: bool = True

    @classmethod
    def create(cls, run: str | Path | None, recipe: str | Path | None = None, *, device: str | None = None,
               progress: bool = True) -> "RunContext":
        """The context of a command: RUN from the argument, else the recipe's ``run.dir``."""
        sections = load_yaml(recipe) if recipe else {}
        run_section = _mapping(sections, "run", recipe)
        root = run or run_section.get("dir")
        if not root:
            raise ConfigError("no run directory: give RUN (or --out), or a recipe with run.dir")
        return cls(RunDir(root), sections, Path(recipe) if recipe else None,
                   device=device or run_section.get("device"), progress=progress)

    def section(self, name: str) -> dict:
        return _mapping(self.recipe, name, self.recipe_path)

    def config(self, cls: type[T], section: str, *overrides: Mapping[str, Any] | None) -> T:
        return build(cls, self.section(section), *overrides, where=section)

    def recipe_tasks(self) -> list:
        """The labelled tasks the recipe's ``tasks:`` section names (tokenlm.pipeline.tasks), or none."""
        from tokenlm.pipeline.tasks import SECTION, recipe_tasks

        return recipe_tasks(self.run, self.recipe.get(SECTION))

    def tasks(self) -> list:
        """The tasks the run is judged on: the recipe's, else those it holds, else its own data."""
        from tokenlm.pipeline.tasks import SECTION, run_tasks

        return run_tasks(self.run, self.recipe.get(SECTION))

    def pretrain_data(self) -> tuple[Any, dict]:
        """(path or list of paths, split section) of the pretraining corpus: the recipe's
        ``pretrain:`` section, else its ``data:`` section (a single-dataset run)."""
        pretrain = self.section("pretrain")
        if pretrain:
            return pretrain.get("path"), pretrain.get("split") or self.section("split")
        return self.section("data").get("path"), self.section("split")


def _mapping(sections: Mapping[str, Any], name: str, recipe) -> dict:
    value = sections.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{recipe}: section '{name}' must be a mapping")
    return value


def artifact_settings(keep_checkpoints, log_to, run_section: Mapping[str, Any] | None = None) -> ExitStack:
    """The context of ``--keep-checkpoints`` / ``--log-to``, falling back on a recipe's
    ``run.keep_checkpoints`` / ``run.log_to``."""
    section = run_section or {}
    stack = ExitStack()
    keep = keep_checkpoints if keep_checkpoints is not None else section.get("keep_checkpoints", False)
    if not isinstance(keep, bool):
        raise ConfigError(f"option 'run.keep_checkpoints' takes true/false, got {keep!r}")
    stack.enter_context(keeping_checkpoints(keep))
    stack.enter_context(logging_to(log_to if log_to is not None else section.get("log_to")))
    return stack
