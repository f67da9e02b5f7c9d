"""``tokenlm run RECIPE.yaml``: every stage in order, each cached, ending with RUN/report.md.

A recipe is one YAML file with a section per stage (see recipes/demo.yaml). Each stage skips
itself when its outputs are up to date, so a rerun after an interruption or a config change
redoes only what changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from tokenlm.config import build, load_yaml, recipe_section
from tokenlm.errors import ConfigError

PIPELINE = ("data", "prepare", "tokenize", "pretrain", "probe", "vocoder", "sweep")


def run_recipe(recipe: str | Path, *, stages: tuple[str, ...] | None = None, device: str | None = None) -> Path:
    """Run the recipe's stages in pipeline order; return the path of the run's report."""
    from tokenlm.stages.report import write_report

    sections = load_yaml(recipe)
    run_dir = Path(recipe_section(recipe, "run").get("dir") or "")
    if not str(run_dir) or str(run_dir) == ".":
        raise ConfigError(f"{recipe}: needs run.dir (where the run's artifacts go)")
    wanted = tuple(stages or sections.get("stages") or PIPELINE)
    unknown = [s for s in wanted if s not in PIPELINE]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)} (stages: {', '.join(PIPELINE)})")
    device = device or recipe_section(recipe, "run").get("device")
    for name in PIPELINE:
        if name not in wanted:
            continue
        click.secho(f"== {name}", bold=True, err=True)
        start = time.time()
        RUNNERS[name](recipe, run_dir, device)
        click.echo(f"   {name} done in {time.time() - start:.1f} s", err=True)
    return write_report(run_dir)


def _data(recipe, run_dir: Path, device) -> None:
    """Build the demo set when the recipe asks for one (data.demo: instruments|speech)."""
    section = recipe_section(recipe, "data")
    if section.get("demo"):
        from tokenlm.demo import build_demo

        build_demo(Path(section["path"]), kind=section["demo"], seed=int(section.get("seed", 0)))


def _prepare(recipe, run_dir: Path, device) -> None:
    from tokenlm.data import SplitConfig
    from tokenlm.features import FeatureConfig
    from tokenlm.stages.prepare import prepare

    section = recipe_section(recipe, "data")
    if not section.get("path"):
        raise ConfigError(f"{recipe}: needs data.path")
    prepare(section["path"], run_dir,
            build(FeatureConfig, recipe_section(recipe, "features"), where="features"),
            build(SplitConfig, recipe_section(recipe, "split"), where="split"),
            strict=bool(section.get("strict", False)))


def _tokenize(recipe, run_dir: Path, device) -> None:
    from tokenlm.codebook import CodebookConfig
    from tokenlm.stages.tokenize import tokenize, tokenizer_config

    tokenize(run_dir, tokenizer_config(recipe, {}),
             build(CodebookConfig, recipe_section(recipe, "codebook"), where="codebook"), device=device)


def _pretrain(recipe, run_dir: Path, device) -> None:
    from tokenlm.stages.pretrain import lm_configs, pretrain

    model, training = lm_configs(recipe)
    pretrain(run_dir, model, training, device=device)


def _probe(recipe, run_dir: Path, device) -> None:
    from tokenlm.stages.probe import configs, probe

    probe(run_dir, *configs(recipe_section(recipe, "probe")), device=device)


def _vocoder(recipe, run_dir: Path, device) -> None:
    """Train the vocoder, then hear the whole pipeline once: the first test clip continued
    by the LM for one second and decoded (RUN/generated/), for the report."""
    from tokenlm.artifacts import read_jsonl
    from tokenlm.stages.vocoder import generate_file, run_from_recipe

    run_from_recipe(recipe, run_dir, device)
    clips = [r for r in read_jsonl(run_dir / "manifest.jsonl") if r["status"] == "ok" and r["split"] == "test"]
    if not clips or not (run_dir / "lm" / "stage.json").is_file():
        return
    out = run_dir / "generated" / f"{Path(clips[0]['path']).stem}_continued.wav"
    models = max((run_dir / name / "stage.json").stat().st_mtime for name in ("lm", "vocoder"))
    if not out.is_file() or out.stat().st_mtime < models:  # new models, new example
        out.parent.mkdir(exist_ok=True)
        generate_file(run_dir, out, prompt=clips[0]["path"], seconds=1.0, seed=0, device=device)


def _sweep(recipe, run_dir: Path, device) -> None:
    from tokenlm.codebook import CodebookConfig
    from tokenlm.stages.sweep import SweepConfig, sweep

    sweep(run_dir, build(SweepConfig, recipe_section(recipe, "sweep"), where="sweep"),
          build(CodebookConfig, recipe_section(recipe, "codebook"), where="codebook"), recipe=recipe, device=device)


RUNNERS = {
    "data": _data,
    "prepare": _prepare,
    "tokenize": _tokenize,
    "pretrain": _pretrain,
    "probe": _probe,
    "vocoder": _vocoder,
    "sweep": _sweep,
}


@click.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--stages", help=f"Comma list of stages to run (default: the recipe's, else all: {','.join(PIPELINE)}).")
@click.option("--device", help="cpu, cuda or auto (default: the recipe's run.device, else auto).")
def command(recipe, stages, device):
    """Run every stage of RECIPE in order (each cached) and write RUN/report.md."""
    report = run_recipe(recipe, stages=tuple(stages.split(",")) if stages else None, device=device)
    click.echo(f"report: {report}")
