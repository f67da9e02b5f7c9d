"""Stage 5: linear probes of every representation of a run, on each of its tasks, beside
the CNN baselines.

    tokenlm probe RUN [--task DIR ...] [--baselines vgg,simclr,timbre] [--layers all|N,...]

A task (tokenlm.pipeline.tasks) is a labelled dataset: the run's own data for a single-dataset run,
else each dataset of the recipe's ``tasks:`` section or of ``--task``, featurised and encoded
with the run's frozen tokenizer into RUN/tasks/<task>/ (nothing self-supervised is trained
again). Every labelled clip of a task is turned into one vector per representation
(``tokenlm.evaluation.representations``), and the same linear probe
(``tokenlm.evaluation.linear_probe``: standardise, multinomial logistic regression, C chosen
on val, test scored once) reads the label out of it. Rows:

- ``logmel_stats``: mean + std of each mel bin over time, the floor every learned
  representation must beat;
- ``bag_of_codes``: the normalised histogram of a clip's codes (TASK/tokens/k{K});
- ``autoencoder``: the tokenizer's un-quantised bottleneck, pooled over time;
- ``quantised``: the same bottleneck with each patch replaced by its codes' centroid (or the
  sum / concatenation of its levels'), pooled as the autoencoder row is. The rows read as a
  ladder, bottleneck -> quantised -> bag of codes -> LM layers: each step shows what is lost
  there;
- ``lm_layer_<i>``: the code LM's hidden states, pooled over time, per layer (0 is the
  embedding output), ``lm_best``: the layer with the best val accuracy, and with
  ``concat_layers`` ``lm_concat``: the probed layers side by side, pooled as lm_best is;
  pooling (mean, mean+std or mean+max) is chosen on val per row unless ``pooling`` fixes it;
- ``simclr``: the SimCLR trunk pretrained on the run's corpus (RUN/baselines/simclr), then the
  same linear probe;
- supervised baselines, each its own cached stage under TASK/baselines/<name>/
  (``tokenlm.pipeline.baselines``), trained or reused first: ``vgg``, ``timbre``, ``temporal``,
  ``timbre+temporal``, ``audio_transformer``, ``resnet18``/``resnet50``/``densenet121`` (their
  own classifier's accuracy).

Datasets with official folds (ESC-50, UrbanSound8K) are also scored by cross-validation over
folds (mean ± std); otherwise the train/val/test split is the whole story. Every test score
carries a 95% interval (``tokenlm.evaluation.intervals``).

Writes RUN/probe/<task>/results.json and report.md per task, and RUN/probe/summary.{json,md}:
the headline accuracy of every representation on every task, one table. A row whose artifacts
are missing (no tokenizer yet, no LM yet) is recorded as skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import click

from tokenlm.core.config import to_dict
from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import write_json
from tokenlm.core.runtime import pick_device, seed_everything
from tokenlm.data.splits import SplitConfig
from tokenlm.evaluation.clips import LabelledClips
from tokenlm.evaluation.lm_readings import lm_objective, reading_candidates
from tokenlm.evaluation.probe_table import render_report
from tokenlm.evaluation.representations import (
    Unavailable,
    autoencoder_bottleneck,
    bag_of_codes,
    lm_layers,
    load_codes,
    logmel_stats,
    quantised_bottleneck,
    simclr_embeddings,
    tokenizer_cost,
    tokens_folder_or_none,
)
from tokenlm.evaluation.rows import baseline_row, headline, representation_row, selection_score, skipped_row
from tokenlm.evaluation.summary import summary_tasks, write_summary
from tokenlm.pipeline.baselines import pretrain_simclr, supervised_baselines
from tokenlm.pipeline.prepare import data_flags, prepare_task
from tokenlm.pipeline.probe_config import SECTION, BaselinesConfig, ProbeConfig, configs
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.tasks import Task, own_task
from tokenlm.pipeline.tokenize import encode_task
from tokenlm.run.artifacts import Stage
from tokenlm.run.rundir import REPORT, RESULTS, RunDir, as_run, is_finished, read_feature_meta


def probe(run: str | Path | RunDir, config: ProbeConfig = ProbeConfig(),
          baseline_config: BaselinesConfig = BaselinesConfig(), *, task: Task | None = None,
          device: str | None = None, progress: bool = True, lm_dir: str | Path | None = None,
          out_dir: str | Path | None = None) -> Path:
    """Probe every representation of ``run`` on ``task`` (default: the run's own data) beside
    the baselines ``config.baselines`` lists (trained first, or reused).

    Needs the task's features; the code rows need its codes (``tokenize.encode_task``), the
    autoencoder row RUN/tokenizer, the LM rows RUN/lm or ``lm_dir``, the SimCLR row
    RUN/baselines/simclr (each skipped with its reason when missing). Writes
    RUN/probe/<task>, or ``out_dir`` (the sweep probes one LM per codebook size), and returns it.
    """
    run = as_run(run)
    task = task or own_task(run)
    clips = LabelledClips(task.data)
    torch_device = pick_device(device)
    seed_everything(config.seed)
    supervised = supervised_baselines(clips, config, baseline_config, torch_device, progress)
    simclr_dir = None
    if "simclr" in config.baselines:  # self-supervised: trained once on the corpus, never again here
        simclr_dir = run.baseline("simclr")
        if not is_finished(simclr_dir):
            pretrain_simclr(run, config, baseline_config, torch_device, progress)

    lm_dir = Path(lm_dir) if lm_dir is not None else run.lm
    codebook_size = config.codebook_size or run.codebook_size_or_none()
    inputs = {"features": task.data.features, "tokenizer": _optional_key(run.tokenizer),
              "lm": _optional_key(lm_dir), "tokens": _optional_key(tokens_folder_or_none(task.data, codebook_size)),
              "simclr": _optional_key(simclr_dir),
              **{f"baseline_{name}": task.data.baseline(name) for name in supervised}}
    settings = {**to_dict(config), **to_dict(baseline_config)}  # the probe: section as one record
    stage = Stage(Path(out_dir) if out_dir is not None else run.probe_task(task.name), config=settings,
                  inputs=inputs, lock_root=run.lock_root)

    def make(work: Path) -> dict:
        rows = representation_rows(clips, run, codebook_size, config, torch_device, progress, lm_dir)
        if simclr_dir is not None:
            rows.append(simclr_row(clips, simclr_dir, config, baseline_config, torch_device, progress))
        rows += [baseline_row(results) for results in supervised.values()]
        results = {"run": str(run.root), "task": task.name, "task_data": str(task.path or run.features),
                   "pretraining_data": _pretraining_source(run), "pretrained_apart": not task.is_own,
                   "dataset": clips.summary(), "config": settings, "rows": rows}
        write_json(work / RESULTS, results)
        (work / REPORT).write_text(render_report(results))
        click.echo(f"probe results: {stage.out_dir / RESULTS}\nprobe report:  {stage.out_dir / REPORT}")
        return {"rows": {row["name"]: headline(row) for row in rows}}

    return stage.build(f"probe {task.name}", make)


def probe_tasks(run: RunDir, tasks: list[Task], config: ProbeConfig, baseline_config: BaselinesConfig, *,
                split: SplitConfig = SplitConfig(), device: str | None = None, progress: bool = True,
                **flags) -> list[Path]:
    """Prepare and encode each task with the run's frozen tokenizer (when the run has one), probe
    it, and rewrite RUN/probe/summary.{json,md}. Returns each task's probe folder."""
    torch_device = pick_device(device)
    codebook_size = config.codebook_size or run.codebook_size_or_none()
    outs = []
    for task in tasks:
        prepare_task(run, task, split, progress=progress, **flags)
        if codebook_size is not None and is_finished(run.codebook(codebook_size)):
            encode_task(run, task, codebook_size, device=torch_device, progress=progress)
        outs.append(probe(run, config, baseline_config, task=task, device=device, progress=progress))
    write_summary(run.probe, summary_tasks(run.probe) + [task.name for task in tasks])
    return outs


def _pretraining_source(run: RunDir) -> str | None:
    """What the run's self-supervised models were trained on (its features' dataset)."""
    try:
        return read_feature_meta(run.features).raw.get("data")
    except ArtifactError:
        return None


def representation_rows(clips: LabelledClips, run: RunDir, codebook_size: int | None, config: ProbeConfig, device,
                        progress: bool, lm_dir: Path) -> list[dict]:
    """Every row of the run's tokenizer and LM (and the log-mel floor) on the clips, in table
    order; rows whose inputs are missing come back skipped."""
    rows = [representation_row(logmel_stats(clips, progress), clips, config)]
    try:
        codes, codes_missing = load_codes(clips, codebook_size), None
    except Unavailable as why:
        codes, codes_missing = None, str(why)
    cost = tokenizer_cost(run, codebook_size=None if codes is None else codes.codebook_size)

    # The ladder, in order: bottleneck -> quantised -> bag of codes -> LM layers.
    try:
        bottleneck = autoencoder_bottleneck(clips, run, codebook_size, device, progress)
        rows.append(representation_row(bottleneck, clips, config))
    except Unavailable as why:
        rows.append(skipped_row("autoencoder", "autoencoder bottleneck", str(why)))
    try:  # the codebook of the probed codes (they name its K), else the run's
        quantised = quantised_bottleneck(clips, run, codebook_size if codes is None else codes.codebook_size, device,
                                         progress)
        rows.append(representation_row(quantised, clips, config))
    except Unavailable as why:
        rows.append(skipped_row("quantised", "quantised bottleneck", str(why)))
    if codes is None:
        rows.append(skipped_row("bag_of_codes", "bag of codes", codes_missing))
    else:
        rows.append(representation_row(bag_of_codes(clips, codes, cost), clips, config))

    if codes is None:
        return rows + [skipped_row("lm", "LM hidden states", codes_missing)]
    read = {}  # reading -> (its LM representations, its layer rows, its best layer row)
    for reading in reading_candidates(config.lm_reading, lm_objective(lm_dir)):
        try:
            layers = lm_layers(clips, codes, lm_dir, config.layers, config.lm_batch_clips, cost, device, progress,
                               concat=config.concat_layers, reading=reading)
        except Unavailable as why:
            return rows + [skipped_row("lm", "LM hidden states", str(why))]
        layer_rows = [representation_row(rep, clips, config) for rep in layers if rep.name != "lm_concat"]
        read[reading] = (layers, layer_rows, max(layer_rows, key=selection_score))
    # The reading whose best layer is best on val (ties: the first, reading once).
    reading = max(read, key=lambda r: selection_score(read[r][2]))
    layers, layer_rows, best = read[reading]
    layer = best["name"].removeprefix("lm_layer_")
    rows += layer_rows + [{**best, "name": "lm_best", "layer": best["name"], "reading": reading,
                           "reading_val_accuracy": {r: selection_score(v[2]) for r, v in read.items()},
                           "readings": {r: _reading_record(v[2]) for r, v in read.items()},
                           "title": f"LM best layer (layer {layer}, {best['pooling']}, reading {reading}, "
                                    "chosen on val)"}]
    # The concatenation is pooled as the best layer is: one more probe, not one per pooling.
    return rows + [representation_row(rep, clips, config, poolings=(best["pooling"],))
                   for rep in layers if rep.name == "lm_concat"]


def _reading_record(best: dict) -> dict:
    """One reading's best layer in brief (the choice is made on val; test is for the record)."""
    test = best.get("test") or {}
    return {"layer": best["name"], "pooling": best.get("pooling"), "val_accuracy": selection_score(best),
            "accuracy": headline(best), "accuracy_ci": test.get("accuracy_ci")}


def simclr_row(clips: LabelledClips, simclr_dir: Path, config: ProbeConfig, baseline_config: BaselinesConfig,
               device, progress: bool) -> dict:
    """The SimCLR row: its trunk read as ``simclr_embedding`` says (auto: pooled and bands,
    the better on val, the choice recorded as ``embedding``)."""
    setting = baseline_config.simclr_embedding
    choices = ("pooled", "bands") if setting == "auto" else (setting,)
    tried = {c: representation_row(simclr_embeddings(clips, simclr_dir, device, progress, embedding=c), clips,
                                   config) for c in choices}
    best = max(choices, key=lambda c: selection_score(tried[c]))  # ties: pooled, the reference
    return {**tried[best], "embedding": best,
            "embedding_val_accuracy": {c: selection_score(row) for c, row in tried.items()}}


def _optional_key(directory: Path | None) -> Path | None:
    """A finished stage the probe can do without (its key is read by the Stage); None when it is missing."""
    return Path(directory) if directory is not None and is_finished(directory) else None


def run(ctx: RunContext) -> None:
    """``tokenlm run``: every task of the run probed as the recipe's ``probe:`` section says."""
    probe_tasks(ctx.run, ctx.tasks(), *configs(ctx.section(SECTION)), split=ctx.config(SplitConfig, "split"),
                device=ctx.device, progress=ctx.progress, **data_flags(ctx.section("data")))
