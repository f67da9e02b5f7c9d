"""The data-scaling study: does the code LM improve as its unlabelled pretraining data grows?

    tokenlm scale RECIPE [--hours 0.25,0.5,1,2]

For each size H the self-supervised stages (autoencoder, codebook, code LM, and SimCLR when
the probe lists it) are trained on the first H hours of the pretraining corpus, taken in one
seeded order so the subsets are nested (the 1 h subset holds the 0.5 h one), each in a run
folder of its own, RUN/scale/h{H}/ (the recipe's settings, cached stage by stage). Each size's
models are probed on every task of the recipe (a single-dataset recipe: the dataset itself,
whose test and val clips never enter a subset). The supervised CNNs and the log-mel floor do
not depend on H: they are drawn as lines.

Levers (``--with-levers``, the recipe's ``levers:`` section: name -> the ``lm:`` keys it
changes, e.g. ``multi: {objective: multi}``): the code LM trained again at the largest size
with other settings and probed the same way, as further rows beside the reference.

Writes RUN/scale/ (tokenlm.reporting.scale): scale.csv (one row per size, task and
representation, with the 95% interval), scale.json, scale.png (probe accuracy against
pretraining hours, one panel per task) and report.md, which the run's report includes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import click
import numpy as np

from tokenlm.core.config import to_dict
from tokenlm.core.errors import ConfigError
from tokenlm.core.extras import require
from tokenlm.core.fileio import read_json, write_text
from tokenlm.core.runtime import pick_device
from tokenlm.data.splits import SplitConfig
from tokenlm.data.store import RaggedSplit
from tokenlm.evaluation.clips import LabelledClips
from tokenlm.evaluation.summary import cell
from tokenlm.pipeline import data as data_stage
from tokenlm.pipeline import prepare as prepare_stage
from tokenlm.pipeline.baselines import pretrain_simclr, supervised_baselines
from tokenlm.pipeline.prepare import data_flags, prepare, prepare_task
from tokenlm.pipeline.pretrain import lm_configs, pretrain
from tokenlm.pipeline.probe import probe
from tokenlm.pipeline.probe_config import configs
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.tasks import Task, own_task
from tokenlm.pipeline.tokenize import encode_task, tokenize, tokenizer_config
from tokenlm.reporting.scale import CURVES, LINES, write_scale_outputs
from tokenlm.run.artifacts import Stage
from tokenlm.run.rundir import METRICS, REPORT, RESULTS, RunDir, read_feature_meta, read_run_manifest
from tokenlm.tokenizer.codebook import CodebookConfig

SECTION = "scale"




@dataclass(frozen=True)
class ScaleConfig:
    """The ``scale:`` recipe section."""

    hours: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # pretraining sizes (hours of train-split audio)
    seed: int = 0  # the order in which the corpus's clips join the nested subsets
    with_levers: bool = False  # also train the recipe's ``levers:`` LMs at the largest size
    # LM budget per size in passes over its train codes (steps = passes x codes / (batch x
    # context)), so a larger corpus is trained on as often as a smaller one; None: the lm:
    # section's steps at every size. Early stopping still applies; the report says the steps.
    lm_passes: float | None = None

    def __post_init__(self):
        if not self.hours or min(self.hours) <= 0:
            raise ValueError("hours needs positive sizes")
        if self.lm_passes is not None and self.lm_passes <= 0:
            raise ValueError(f"lm_passes must be positive, got {self.lm_passes}")
        object.__setattr__(self, "hours", tuple(sorted(set(float(h) for h in self.hours))))


def scale(ctx: RunContext, config: ScaleConfig) -> Path:
    """Train the self-supervised stages on nested subsets of the corpus, probe each on every
    task; returns RUN/scale."""
    require("matplotlib", "report", "the scale study's plot")  # before the hours of work, not after
    run, device = ctx.run, pick_device(ctx.device)
    probe_config, baseline_config = configs(ctx.section("probe"))
    data_stage.run(ctx)  # offline data the recipe asks for and lacks (the demo corpus and tasks)
    prepare_stage.run(ctx)  # the whole corpus (the pool the subsets come from) and the tasks
    tasks = ctx.recipe_tasks() or [own_task(run)]
    lines = _lines(run, tasks, probe_config, baseline_config, device, ctx.progress)

    subsets = nested_subsets(read_run_manifest(run), config.hours, config.seed)
    points, rows = [], []
    for hours in config.hours:
        click.secho(f"-- {hours:g} h of pretraining audio", bold=True, err=True)
        point = run.scale_point(hours)
        point_record, point_rows = _train_and_probe(ctx, point, subsets[hours], tasks, probe_config,
                                                    baseline_config, device, config.lm_passes)
        points.append({"hours": hours, **point_record})
        rows += [{"hours": hours, "train_hours": point_record["train_hours"], **row} for row in point_rows]

    largest = run.scale_point(config.hours[-1])
    levers = lever_sections(ctx) if config.with_levers else {}
    lever_rows = train_levers(ctx, largest, levers, tasks, probe_config, baseline_config)
    inputs = {f"h{h:g}/{t.name}": run.scale_point(h).probe_task(t.name) for h in config.hours for t in tasks}
    inputs.update({f"{name}/{t.name}": largest.lever(name).probe_task(t.name) for name in levers
                   for t in tasks})
    stage = Stage(run.scale, config=to_dict(config), inputs=inputs, lock_root=run.lock_root)
    work = stage.start()
    write_scale_outputs(work, points, rows, lines, [t.name for t in tasks], lever_rows)
    stage.finish()
    click.echo(f"scale: {stage.out_dir / REPORT}")
    return stage.out_dir


def nested_subsets(manifest: list[dict], hours: tuple[float, ...], seed: int) -> dict[float, list[dict]]:
    """The corpus's usable train and val clips in one seeded order, and for each size the
    shortest prefix of that order holding ``hours`` of train audio (all of it when the corpus
    is shorter): nested by construction. Test clips never enter."""
    pool = [r for r in manifest if r["status"] == "ok" and r["split"] in ("train", "val")]
    if not any(r["split"] == "train" for r in pool):
        raise ConfigError("the pretraining corpus has no usable train clip")
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    seconds = np.cumsum([r["duration"] if r["split"] == "train" else 0.0 for r in order])
    subsets = {}
    for size in hours:
        end = int(np.searchsorted(seconds, size * 3600.0 - 1e-6)) + 1  # first prefix reaching the size
        subsets[size] = order[:min(end, len(order))]
    return subsets


def _train_and_probe(ctx: RunContext, point: RunDir, clips: list[dict], tasks: list[Task], probe_config,
                     baseline_config, device, lm_passes: float | None = None) -> tuple[dict, list[dict]]:
    """One size: its corpus subset prepared, tokenizer, LM (and SimCLR) trained, each task
    featurised, encoded and probed with them. Returns (the size's record, its probe rows)."""
    point.root.mkdir(parents=True, exist_ok=True)
    subset = point.corpus_subset
    write_text(subset, "".join(_subset_line(r) for r in clips))
    flags = {**data_flags(ctx.section("data")), "allow_outside": True}  # the subset lists the corpus's files
    features = read_feature_meta(ctx.run.features).config
    prepare(subset, point, features, SplitConfig(), progress=ctx.progress, **flags)
    tokenizer = tokenizer_config(ctx.section("tokenizer"), {})
    tokenize(point, tokenizer, ctx.config(CodebookConfig, "codebook"), device=ctx.device, progress=ctx.progress)
    model, training = lm_configs(ctx.section("lm"))
    if lm_passes is not None:
        training = replace(training, steps=steps_for_passes(lm_passes, point, model.context, training.batch_size))
    pretrain(point, model, training, device=ctx.device, progress=ctx.progress)
    if "simclr" in probe_config.baselines:
        pretrain_simclr(point, probe_config, baseline_config, device, ctx.progress)
    self_supervised = replace(probe_config, baselines=tuple(b for b in probe_config.baselines if b == "simclr"))
    split = ctx.config(SplitConfig, "split")
    rows = []
    for task in tasks:
        task = _point_task(ctx, point, task)
        prepare_task(point, task, split, progress=ctx.progress, **data_flags(ctx.section("data")))
        encode_task(point, task, tokenizer.codebook_size, device=device, progress=ctx.progress)
        out = probe(point, self_supervised, baseline_config, task=task, device=ctx.device, progress=ctx.progress)
        for row in read_json(out / RESULTS)["rows"]:
            if row.get("status") == "ok" and (row["name"] in CURVES or row["name"] in LINES):
                rows.append({"task": task.name, **_row_cells(row)})
    lm = read_json(point.lm / METRICS)
    train_seconds = sum(r["duration"] for r in clips if r["split"] == "train")
    return {"train_hours": round(train_seconds / 3600, 4), "clips": len(clips),
            "lm_val_perplexity": lm.get("val_ppl"), "lm_bigram_perplexity": lm.get("bigram_ppl"),
            "lm_unigram_perplexity": lm.get("unigram_ppl"), "lm_best_step": lm.get("best_step"),
            "lm_steps_budget": training.steps, "lm_steps": lm.get("steps"), "lm_train_codes": lm.get("train_codes"),
            "lm_passes": lm_passes, "lm_batch_codes": training.batch_size * model.context}, rows


def steps_for_passes(passes: float, point: RunDir, context: int, batch_size: int) -> int:
    """LM steps that read the size's train codes ``passes`` times (at least one step)."""
    codes = len(RaggedSplit(point.tokens(), "train", "uint16").data)
    return max(1, math.ceil(passes * codes / (batch_size * context)))


def _point_task(ctx: RunContext, point: RunDir, task: Task) -> Task:
    """A task of one size's run: the task's own data (a single-dataset run: the dataset)."""
    return Task(task.name, point.task(task.name), task.path or _dataset_of(ctx.run))


def lever_sections(ctx: RunContext) -> dict[str, dict]:
    """The recipe's ``levers:`` section: name -> the keys of the ``lm:`` section it changes."""
    levers = ctx.section("levers")
    for name, overrides in levers.items():
        if not isinstance(overrides, dict) or not overrides:
            raise ConfigError(f"levers.{name}: give the lm: keys it changes, e.g. {{objective: multi}}")
    return levers


def train_levers(ctx: RunContext, point: RunDir, levers: dict[str, dict], tasks: list[Task], probe_config,
                 baseline_config) -> list[dict]:
    """Each lever: the code LM trained again on the largest size's codes with the ``lm:``
    section changed as it says (point/levers/<name>/lm), probed on every task with the same
    probe: further rows beside the reference LM. Returns their best-layer rows."""
    lm_only = replace(probe_config, baselines=())
    rows = []
    for name, overrides in levers.items():
        click.secho(f"-- lever {name}: lm {overrides}", bold=True, err=True)
        lever = point.lever(name)
        section = {**ctx.section("lm"), **overrides,
                   "training": {**(ctx.section("lm").get("training") or {}), **(overrides.get("training") or {})}}
        pretrain(point, *lm_configs(section), device=ctx.device, progress=ctx.progress, out_dir=lever.lm)
        for task in tasks:
            out = probe(point, lm_only, baseline_config, task=_point_task(ctx, point, task), device=ctx.device,
                        progress=ctx.progress, lm_dir=lever.lm, out_dir=lever.probe_task(task.name))
            best = next(r for r in read_json(out / RESULTS)["rows"] if r["name"] in ("lm_best", "lm"))
            if best.get("status") == "ok":
                rows.append({"lever": name, "task": task.name, "changes": overrides, **_row_cells(best),
                             "lm_metrics": _lm_headline(read_json(lever.lm / METRICS))})
    return rows


def _lm_headline(metrics: dict) -> dict:
    """The LM's own held-out figure: perplexity, or masked-code accuracy for a masked LM."""
    keys = ("val_ppl", "val_masked_accuracy", "objective", "best_step", "steps")
    return {k: metrics[k] for k in keys if k in metrics}


def _subset_line(row: dict) -> str:
    span = {key: row[key] for key in ("start", "end") if key in row}  # a segment stays a segment
    return json.dumps({"id": row["id"], "path": row["path"], **span, "split": row["split"]}) + "\n"


def _dataset_of(run: RunDir) -> str:
    return read_feature_meta(run.features).raw["data"]


def _row_cells(row: dict) -> dict:
    value = cell(row)
    low, high = value["ci"] or (None, None)
    return {"representation": row["name"], "title": row["title"], "accuracy": value["accuracy"],
            "ci_lo": low, "ci_hi": high, "pooling": row.get("pooling")}


def _lines(run: RunDir, tasks: list[Task], probe_config, baseline_config, device, progress) -> dict:
    """What does not depend on the pretraining hours, per task: the supervised CNNs (trained
    once, on the full run's tasks) and chance."""
    supervised = replace(probe_config, baselines=tuple(b for b in probe_config.baselines if b != "simclr"))
    lines = {}
    for task in tasks:
        clips = LabelledClips(task.data)
        results = supervised_baselines(clips, supervised, baseline_config, device, progress)
        lines[task.name] = {name: _row_cells(result) for name, result in results.items()}
        lines[task.name]["chance"] = {"accuracy": 1 / len(clips.classes)}
    return lines


def run(ctx: RunContext) -> None:
    """``tokenlm run``: the study the recipe's ``scale:`` section describes (none: skipped)."""
    if ctx.section(SECTION):
        scale(ctx, ctx.config(ScaleConfig, SECTION))
    else:
        click.echo("   no scale: section in the recipe: skipped", err=True)
