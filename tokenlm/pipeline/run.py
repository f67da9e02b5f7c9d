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
from tokenlm.core.errors import ArtifactError, ConfigError
from tokenlm.core.extras import require
from tokenlm.core.outputs import publish_text
from tokenlm.core.overrides import apply_overrides
from tokenlm.pipeline.recipe_check import check_recipe
from tokenlm.pipeline.registry import BY_NAME, PIPELINE, RunContext, artifact_settings
from tokenlm.run import lock as runlock
from tokenlm.run.artifacts import STAGE_FILE, made_by_tokenlm
from tokenlm.run.rundir import RunDir

RECIPE_HEADER = "# The recipe as run (overrides applied): `tokenlm run` this file to reproduce the run.\n"


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
    check_recipe(sections, str(recipe))  # a typo in the last stage's section stops here, not hours in
    require("matplotlib", "report", "tokenlm run's report (its figures)")
    run_section = sections["run"]
    ctx = RunContext(RunDir(run_section["dir"]), sections, Path(recipe),
                     device=device or run_section.get("device"))
    wanted = tuple(stages or sections.get("stages") or PIPELINE)
    unknown = [s for s in wanted if s not in PIPELINE]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)} (stages: {', '.join(PIPELINE)})")
    from tokenlm.pipeline.report import write_report  # its plots load matplotlib: not for --help

    # The whole run holds the lock: a second `tokenlm run` is refused before it writes anything,
    # and recipe.yaml describes the run that is being built, once it is sure to be built.
    with artifact_settings(keep_checkpoints, log_to, run_section), runlock.holding(ctx.run.lock_root):
        refuse_folders_tokenlm_did_not_make(ctx.run)
        save_recipe(ctx.run.root, sections)
        for name in PIPELINE:
            if name not in wanted:
                continue
            click.secho(f"== {name}", bold=True, err=True)
            start = time.time()
            BY_NAME[name].load().run(ctx)
            click.echo(f"   {name} done in {time.time() - start:.1f} s", err=True)
        return write_report(ctx.run.root)


def refuse_folders_tokenlm_did_not_make(run: RunDir) -> None:
    """Before anything is written: a folder where a stage goes that tokenlm did not make is
    refused by that stage; say so now, not after recipe.yaml and the stages before it."""
    stages = [run.features, run.tokenizer, run.lm, run.vocoder, run.sweep, run.scale, run.rawlm]
    stages += sorted(run.tokens_root.glob("k*")) if run.tokens_root.is_dir() else []
    for folder in stages:
        if not made_by_tokenlm(folder):
            raise ArtifactError(f"{folder} was not made by tokenlm (no {STAGE_FILE} in it): it would not be replaced; "
                                f"move it out of the way, or choose another run folder")


def save_recipe(root: Path, sections: dict) -> Path:
    """Write the resolved recipe to RUN/recipe.yaml (atomically)."""
    path = RunDir(root).saved_recipe
    publish_text(path, RECIPE_HEADER + yaml.safe_dump(sections, sort_keys=False, default_flow_style=None),
                 legacy=lambda old: old.read_text(errors="replace").startswith(RECIPE_HEADER))
    return path
