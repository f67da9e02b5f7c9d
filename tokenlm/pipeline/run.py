"""``tokenlm run RECIPE.yaml [key=value ...]``: every stage in order, each cached, ending with
RUN/report.md.

A recipe is one YAML file with a section per stage (see recipes/demo.yaml). The stages and
their order come from the registry (tokenlm.pipeline.registry): each one's ``run(ctx)`` skips itself
when its outputs are up to date, so a rerun after an interruption or a config change redoes
only what changed. Overrides (tokenlm.core.overrides) change single keys without copying the
file; the recipe as run, overrides applied, is saved as RUN/recipe.yaml, and
``tokenlm run RUN/recipe.yaml`` reproduces the run.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import yaml

from tokenlm.core.config import load_yaml
from tokenlm.core.errors import ConfigError
from tokenlm.core.fileio import write_text
from tokenlm.core.overrides import apply_overrides
from tokenlm.pipeline.registry import BY_NAME, PIPELINE, RunContext
from tokenlm.run.rundir import RunDir
from tokenlm.pipeline.registry import artifact_settings




def resolve_recipe(recipe: str | Path, overrides: tuple[str, ...] = (), out: str | Path | None = None) -> dict:
    """The recipe's sections with ``overrides`` applied and ``out`` (if given) as run.dir,
    made absolute so that the saved copy runs the same from any folder."""
    sections = apply_overrides(load_yaml(recipe), overrides)
    run_section = sections.setdefault("run", {}) or {}
    if not isinstance(run_section, dict):
        raise ConfigError(f"{recipe}: section 'run' must be a mapping")
    sections["run"] = run_section
    if out is not None:
        run_section["dir"] = str(out)
    if not run_section.get("dir"):
        raise ConfigError(f"{recipe}: no run directory: give --out DIR or run.dir=DIR, or set run.dir in the recipe")
    run_section["dir"] = str(Path(run_section["dir"]).expanduser().resolve())
    return sections


def run_recipe(recipe: str | Path, *, stages: tuple[str, ...] | None = None, device: str | None = None,
               overrides: tuple[str, ...] = (), out: str | Path | None = None,
               keep_checkpoints: bool | None = None, log_to: str | None = None) -> Path:
    """Run the recipe's stages in pipeline order; return the path of the run's report."""
    sections = resolve_recipe(recipe, overrides, out)
    run_section = sections["run"]
    ctx = RunContext(RunDir(run_section["dir"]), sections, Path(recipe),
                     device=device or run_section.get("device"))
    wanted = tuple(stages or sections.get("stages") or PIPELINE)
    unknown = [s for s in wanted if s not in PIPELINE]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)} (stages: {', '.join(PIPELINE)})")
    with artifact_settings(keep_checkpoints, log_to, run_section):
        save_recipe(ctx.run.root, sections)
        for name in PIPELINE:
            if name not in wanted:
                continue
            click.secho(f"== {name}", bold=True, err=True)
            start = time.time()
            BY_NAME[name].load().run(ctx)
            click.echo(f"   {name} done in {time.time() - start:.1f} s", err=True)
    from tokenlm.pipeline.report import write_report  # its plots load matplotlib: not for --help

    return write_report(ctx.run.root)


def save_recipe(root: Path, sections: dict) -> Path:
    """Write the resolved recipe to RUN/recipe.yaml (atomically)."""
    path = RunDir(root).saved_recipe
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# The recipe as run (overrides applied): `tokenlm run` this file to reproduce the run.\n"
    write_text(path, header + yaml.safe_dump(sections, sort_keys=False, default_flow_style=None))
    return path
