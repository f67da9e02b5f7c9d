"""The stage registry: one declaration per command, from which the CLI and ``tokenlm run``
are derived.

Adding a stage means writing its module under tokenlm/stages/ and one line in ``STAGES``.
A stage module provides:

- ``command``: its click command (``tokenlm NAME --help``);
- ``run(ctx)``: for stages of the pipeline, the stage driven by a recipe (``tokenlm run``).

Modules are imported only when their command runs, so ``tokenlm --help`` stays fast: the
one-line help lives here, not in the module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, TypeVar

from tokenlm.config import build, load_yaml
from tokenlm.errors import ConfigError
from tokenlm.rundir import RunDir

T = TypeVar("T")


@dataclass(frozen=True)
class StageSpec:
    name: str  # the command, and the stage's name in a recipe's `stages:` list
    module: str  # tokenlm.stages.<module>: holds `command` (and `run` when in the pipeline)
    help: str  # one line for `tokenlm --help`
    pipeline: bool = True  # a step of `tokenlm run` (False: a tool command such as decode)

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


# In pipeline order: `tokenlm run` runs the pipeline stages in this order, `tokenlm --help`
# lists every command in it.
STAGES = (
    StageSpec("data", "tokenlm.stages.data", "Build the demo dataset; inspect a dataset."),
    StageSpec("prepare", "tokenlm.stages.prepare", "Manifest + log-mel features of a dataset."),
    StageSpec("tokenize", "tokenlm.stages.tokenize", "Train autoencoder + codebook, encode every clip."),
    StageSpec("pretrain", "tokenlm.stages.pretrain", "Train the GPT code language model."),
    StageSpec("generate-codes", "tokenlm.stages.generate_codes", "Continue codes with the LM.", pipeline=False),
    StageSpec("baselines", "tokenlm.stages.baselines", "Train the probe's CNN and SimCLR baselines."),
    StageSpec("probe", "tokenlm.stages.probe", "Linear probes and baselines, one table."),
    StageSpec("vocoder", "tokenlm.stages.vocoder", "Train the WaveNet decoder on (audio, codes)."),
    StageSpec("rawlm", "tokenlm.stages.rawlm", "Next-sample prediction on raw audio: transformer vs WaveNet."),
    StageSpec("decode", "tokenlm.stages.decode", "Audio -> codes -> audio.", pipeline=False),
    StageSpec("generate", "tokenlm.stages.generate", "Continue audio with the LM and the WaveNet.", pipeline=False),
    StageSpec("sweep", "tokenlm.stages.sweep", "Information loss against codebook size."),
    StageSpec("scale", "tokenlm.stages.scale", "Probe accuracy against pretraining hours."),
    StageSpec("export", "tokenlm.stages.export", "Codes as GSLM unit files, an HF dataset or .npy.", pipeline=False),
    StageSpec("publish", "tokenlm.stages.publish", "A run's tokenizer, LM and vocoder as one shareable folder.",
              pipeline=False),
    StageSpec("report", "tokenlm.stages.report", "Rebuild RUN/report.md.", pipeline=False),
    StageSpec("run", "tokenlm.stages.run", "Every stage of a recipe, cached, then the report.", pipeline=False),
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
        """The labelled tasks the recipe's ``tasks:`` section names (tokenlm.tasks), or none."""
        from tokenlm.tasks import SECTION, recipe_tasks

        return recipe_tasks(self.run, self.recipe.get(SECTION))

    def tasks(self) -> list:
        """The tasks the run is judged on: the recipe's, else those it holds, else its own data."""
        from tokenlm.tasks import SECTION, run_tasks

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
