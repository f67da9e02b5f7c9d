"""Stage 5: linear probes of every representation of a run, beside the CNN baselines.

    tokenlm probe RUN [--baselines vgg,simclr,timbre] [--layers all|N,...]

Every labelled clip of RUN/features is turned into one vector per representation
(``tokenlm.evaluation.representations``), and the same linear probe
(``tokenlm.evaluation.linear_probe``: standardise, multinomial logistic regression, C chosen
on val, test scored once) reads the label out of it. Rows:

- ``logmel_stats``: mean + std of each mel bin over time, the floor every learned
  representation must beat;
- ``bag_of_codes``: the normalised histogram of a clip's codes (RUN/tokens/k{K});
- ``autoencoder``: the tokenizer's un-quantised bottleneck, pooled over time;
- ``lm_layer_<i>``: the code LM's hidden states, pooled over time, per layer (0 is the
  embedding output), ``lm_best``: the layer with the best val accuracy, and with
  ``concat_layers`` ``lm_concat``: the probed layers side by side, pooled as lm_best is;
  pooling (mean, mean+std or mean+max) is chosen on val per row unless ``pooling`` fixes it;
- baselines, each its own cached stage under RUN/baselines/<name>/ (``tokenlm.stages.baselines``),
  trained or reused first: ``vgg`` and ``timbre`` (supervised end to end: their own
  classifier's accuracy), ``simclr`` (self-supervised trunk, then the same linear probe).

Datasets with official folds (ESC-50, UrbanSound8K) are also scored by cross-validation over
folds (mean ± std); otherwise the train/val/test split is the whole story. Every test score
carries a 95% interval (``tokenlm.evaluation.intervals``).

Writes RUN/probe/results.json and RUN/probe/report.md. A row whose artifacts are missing
(no tokenizer yet, no LM yet) is recorded as skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import click

from tokenlm.artifacts import Stage, stage_key
from tokenlm.config import to_dict
from tokenlm.evaluation.clips import LabelledClips
from tokenlm.evaluation.probe_table import render_report
from tokenlm.evaluation.representations import (
    Unavailable, autoencoder_bottleneck, bag_of_codes, lm_layers, load_codes, logmel_stats, tokenizer_cost,
    tokens_folder_or_none,
)
from tokenlm.evaluation.rows import baseline_row, headline, representation_row, selection_score, skipped_row
from tokenlm.fileio import write_json
from tokenlm.pipeline import RunContext
from tokenlm.rundir import REPORT, RESULTS, RunDir, as_run, is_finished
from tokenlm.runtime import pick_device, seed_everything
from tokenlm.stages.baselines import train_baselines
from tokenlm.stages.options import baseline_options
from tokenlm.stages.probe_config import SECTION, BaselinesConfig, ProbeConfig, configs

# ---- the stage ------------------------------------------------------------------------

def probe(run: str | Path | RunDir, config: ProbeConfig = ProbeConfig(),
          baseline_config: BaselinesConfig = BaselinesConfig(), *, device: str | None = None,
          progress: bool = True, lm_dir: str | Path | None = None, out_dir: str | Path | None = None) -> Path:
    """Probe every representation of ``run`` beside the baselines ``config.baselines`` lists
    (trained first, or reused).

    Needs RUN/features; the code rows need RUN/tokens, the autoencoder row RUN/tokenizer, the
    LM rows RUN/lm or ``lm_dir`` (each skipped with its reason when missing). Writes RUN/probe,
    or ``out_dir`` (the sweep probes one LM per codebook size), and returns it.
    """
    run = as_run(run)
    clips = LabelledClips(run)
    torch_device = pick_device(device)
    seed_everything(config.seed)
    baselines = train_baselines(clips, config, baseline_config, torch_device, progress)

    lm_dir = Path(lm_dir) if lm_dir is not None else run.lm
    inputs = {"features": stage_key(run.features), "tokenizer": _optional_key(run.tokenizer),
              "lm": _optional_key(lm_dir), "tokens": _optional_key(tokens_folder_or_none(run, config.codebook_size)),
              **{f"baseline_{name}": stage_key(run.baseline(name)) for name in baselines}}
    settings = {**to_dict(config), **to_dict(baseline_config)}  # the probe: section as one record
    stage = Stage(Path(out_dir) if out_dir is not None else run.probe, config=settings, inputs=inputs)

    def make(work: Path) -> dict:
        rows = representation_rows(clips, config, torch_device, progress, lm_dir)
        rows += [baseline_row(results) for results in baselines.values()]
        results = {"run": str(run.root), "dataset": clips.summary(), "config": settings, "rows": rows}
        write_json(work / RESULTS, results)
        (work / REPORT).write_text(render_report(results))
        click.echo(f"probe results: {stage.out_dir / RESULTS}\nprobe report:  {stage.out_dir / REPORT}")
        return {"rows": {row["name"]: headline(row) for row in rows}}

    return stage.build("probe", make)


def representation_rows(clips: LabelledClips, config: ProbeConfig, device, progress: bool,
                        lm_dir: Path) -> list[dict]:
    """Every non-baseline row, in table order; rows whose inputs are missing come back skipped."""
    rows = [representation_row(logmel_stats(clips, progress), clips, config)]
    try:
        codes, codes_missing = load_codes(clips, config.codebook_size), None
    except Unavailable as why:
        codes, codes_missing = None, str(why)
    cost = tokenizer_cost(clips.run, codebook_size=None if codes is None else codes.codebook_size)

    if codes is None:
        rows.append(skipped_row("bag_of_codes", "bag of codes", codes_missing))
    else:
        rows.append(representation_row(bag_of_codes(clips, codes, cost), clips, config))

    try:
        bottleneck = autoencoder_bottleneck(clips, config.codebook_size, device, progress)
        rows.append(representation_row(bottleneck, clips, config))
    except Unavailable as why:
        rows.append(skipped_row("autoencoder", "autoencoder bottleneck", str(why)))

    if codes is None:
        return rows + [skipped_row("lm", "LM hidden states", codes_missing)]
    try:
        layers = lm_layers(clips, codes, lm_dir, config.layers, config.lm_batch_clips, cost, device, progress,
                           concat=config.concat_layers)
    except Unavailable as why:
        return rows + [skipped_row("lm", "LM hidden states", str(why))]
    layer_rows = [representation_row(rep, clips, config) for rep in layers if rep.name != "lm_concat"]
    best = max(layer_rows, key=selection_score)
    layer = best["name"].removeprefix("lm_layer_")
    rows += layer_rows + [{**best, "name": "lm_best", "layer": best["name"],
                           "title": f"LM best layer (layer {layer}, {best['pooling']}, chosen on val)"}]
    # The concatenation is pooled as the best layer is: one more probe, not one per pooling.
    return rows + [representation_row(rep, clips, config, poolings=(best["pooling"],))
                   for rep in layers if rep.name == "lm_concat"]


def _optional_key(directory: Path | None) -> str | None:
    """The key of a finished stage the probe can do without; None when it is missing."""
    return stage_key(directory) if directory is not None and is_finished(directory) else None


def run(ctx: RunContext) -> None:
    """``tokenlm run``: the probe the recipe's ``probe:`` section describes."""
    probe(ctx.run, *configs(ctx.section(SECTION)), device=ctx.device, progress=ctx.progress)


# ---- command --------------------------------------------------------------------------

@click.command("probe")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@click.option("--baselines", help="Comma list of baselines to train and compare: vgg,simclr,timbre (or none).")
@click.option("--layers", help="LM layers to probe: all (default) or a comma list, 0 = embedding output.")
@click.option("-K", "--codebook-size", type=int,
              help="Codebook size whose codes are probed (default: the run's current).")
@click.option("--config", "recipe", type=click.Path(dir_okay=False), help="Recipe YAML (section: probe; run.dir).")
@baseline_options(seeds="the probes and baselines", folds="the cross-validation over official folds")
def command(run, baselines, layers, codebook_size, recipe, epochs, simclr_epochs, seed, no_folds, device, no_progress):
    """Linear probes of every representation of RUN, beside the CNN baselines: one table.

    \b
    tokenlm probe runs/demo
    tokenlm probe runs/demo --baselines vgg,simclr,timbre --layers 0,4,8
    Writes RUN/probe/results.json and RUN/probe/report.md; baselines go to RUN/baselines/<name>/.
    """
    ctx = RunContext.create(run, recipe, device=device, progress=not no_progress)
    overrides = {"baselines": baselines, "layers": layers, "codebook_size": codebook_size, "epochs": epochs,
                 "simclr_epochs": simclr_epochs, "seed": seed, "folds": False if no_folds else None}
    out = probe(ctx.run, *configs(ctx.section(SECTION), overrides), device=ctx.device, progress=ctx.progress)
    click.echo((out / REPORT).read_text())
