"""``tokenlm run RECIPE.yaml [key=value ...]``: every stage in order, each cached, ending with
RUN/report.md.

A recipe is one YAML file with a section per stage (see recipes/demo.yaml). The stages and
their order come from the registry (tokenlm.pipeline): each one's ``run(ctx)`` skips itself
when its outputs are up to date, so a rerun after an interruption or a config change redoes
only what changed. Overrides (tokenlm.overrides) change single keys without copying the
file; the recipe as run, overrides applied, is saved as RUN/recipe.yaml, and
``tokenlm run RUN/recipe.yaml`` reproduces the run.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import yaml

from tokenlm.config import load_yaml
from tokenlm.errors import ConfigError
from tokenlm.extras import require
from tokenlm.fileio import write_text
from tokenlm.overrides import apply_overrides
from tokenlm.pipeline import BY_NAME, PIPELINE, RunContext
from tokenlm.recipe_check import check_recipe
from tokenlm.rundir import RunDir
from tokenlm.stages.options import artifact_settings

SAVED_RECIPE = "recipe.yaml"  # in RUN: the recipe as run


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
    with artifact_settings(keep_checkpoints, log_to, run_section):
        save_recipe(ctx.run.root, sections)
        for name in PIPELINE:
            if name not in wanted:
                continue
            click.secho(f"== {name}", bold=True, err=True)
            start = time.time()
            BY_NAME[name].load().run(ctx)
            click.echo(f"   {name} done in {time.time() - start:.1f} s", err=True)
    from tokenlm.stages.report import write_report  # its plots load matplotlib: not for --help

    return write_report(ctx.run.root)


def save_recipe(root: Path, sections: dict) -> Path:
    """Write the resolved recipe to RUN/recipe.yaml (atomically)."""
    path = Path(root) / SAVED_RECIPE
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# The recipe as run (overrides applied): `tokenlm run` this file to reproduce the run.\n"
    write_text(path, header + yaml.safe_dump(sections, sort_keys=False, default_flow_style=None))
    return path


@click.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (sets run.dir). [the recipe's run.dir]")
@click.option("--stages", help=f"Comma list of stages to run. [the recipe's, else all: {','.join(PIPELINE)}]")
@click.option("--device", help="cpu, cuda or auto. [the recipe's run.device, else auto]")
@click.option("--keep-checkpoints", is_flag=True, default=None,
              help="Keep each training's ckpt/ (resume state) after its stage finishes. [run.keep_checkpoints, "
                   "else off]")
@click.option("--log-to", help="Also log training to trackers (comma list): tensorboard, wandb, mlflow (offline, "
                               "inside each stage's folder). [run.log_to, else none]")
def command(recipe, overrides, out, stages, device, keep_checkpoints, log_to):
    """Run every stage of RECIPE in order (each cached) and write RUN/report.md.

    KEY=VALUE pairs override single recipe keys (values read as YAML); the recipe as run is
    saved as RUN/recipe.yaml:

    \b
      tokenlm run recipes/demo.yaml lm.training.steps=50 'probe.baselines=[vgg]' --out runs/short
      tokenlm run runs/short/recipe.yaml      # the same run again (every stage up to date)
    """
    report = run_recipe(recipe, stages=tuple(stages.split(",")) if stages else None, device=device,
                        overrides=overrides, out=out, keep_checkpoints=keep_checkpoints, log_to=log_to)
    click.echo(f"report: {report}")
