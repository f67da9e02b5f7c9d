"""The probe's CNN baselines, each a cached stage of its own.

    tokenlm baselines RUN [--baselines vgg,simclr,timbre]

- ``vgg`` and ``timbre``: supervised end to end (``tokenlm.models.cnn``), trained per task
  (TASK/baselines/<name>/, where TASK is RUN/tasks/<task>, or RUN for a single-dataset run) on
  its train split, early-stopped on val, scored on test by their own classifier; with official
  folds, also one model per fold (folds/fold{N}/). Each folder holds model.safetensors +
  config.json (what the model needs on new audio) and results.json, the row the probe shows.
- ``simclr``: self-supervised like the code LM, so trained like it on the run's pretraining
  corpus (RUN/baselines/simclr/: the VGG trunk trained with NT-Xent on the train split, no
  labels); the probe embeds each task's clips with it and reads them with the linear probe.
 ``tokenlm probe --baselines ...`` trains (or
reuses) the baselines it lists before probing. Their settings are the baseline keys of the
recipe's ``probe:`` section (``BaselinesConfig``); the seed, the folds switch and the linear
probe's settings come from the probe's own keys (``ProbeConfig``).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from sklearn.metrics import f1_score

from tokenlm.baselines.cnn import (
    ClassifierTraining,
    count_flops,
    count_parameters,
    load_model,
    predict_clips,
    save_model,
    train_classifier,
)
from tokenlm.baselines.networks import build_network, network_config, title
from tokenlm.baselines.simclr import AugmentConfig, SimCLRConfig, train_simclr
from tokenlm.core.config import to_dict
from tokenlm.core.errors import TokenlmError
from tokenlm.core.fileio import read_json, write_json
from tokenlm.core.runtime import pick_device, seed_everything
from tokenlm.data.store import RaggedSplit
from tokenlm.evaluation.clips import LabelledClips
from tokenlm.evaluation.intervals import bootstrap_intervals
from tokenlm.evaluation.linear_probe import fold_assignments, summarise_folds
from tokenlm.evaluation.probe_table import pct
from tokenlm.evaluation.rows import SUPERVISED
from tokenlm.models.cnn import VGGConfig, VGGish
from tokenlm.models.simclr import SimCLRModel
from tokenlm.pipeline.probe_config import SECTION, BaselinesConfig, ProbeConfig, configs
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.tasks import Task, run_tasks
from tokenlm.run.artifacts import Stage
from tokenlm.run.rundir import (
    METRICS,
    MODEL_RESULTS,
    MODEL_WEIGHTS,
    RESULTS,
    SPLITS,
    RunDir,
    as_run,
    fold_folder,
    read_feature_meta,
)


def baselines(run: str | Path | RunDir, probe: ProbeConfig, config: BaselinesConfig = BaselinesConfig(), *,
              tasks: list[Task] | None = None, device: str | None = None, progress: bool = True) -> dict[str, dict]:
    """Train (or reuse) every baseline ``probe.baselines`` lists: SimCLR on the run's
    pretraining corpus, the supervised CNNs on each task (default: the run's tasks). Returns
    each supervised baseline's results.json by "task/name", SimCLR's metrics by "simclr"."""
    run = as_run(run)
    torch_device = pick_device(device)
    seed_everything(probe.seed)
    results = {}
    if "simclr" in probe.baselines:
        results["simclr"] = read_json(pretrain_simclr(run, probe, config, torch_device, progress) / METRICS)
    for task in tasks if tasks is not None else run_tasks(run):
        clips = LabelledClips(task.data)
        for name, result in supervised_baselines(clips, probe, config, torch_device, progress).items():
            results[f"{task.name}/{name}"] = result
    return results


def supervised_baselines(clips: LabelledClips, probe: ProbeConfig, config: BaselinesConfig, device,
                         progress: bool) -> dict[str, dict]:
    """Train (or reuse) the supervised baselines of ``probe.baselines`` on one task's clips;
    each one's results.json by name."""
    results = {}
    for name in probe.baselines:
        if name == "simclr":
            continue  # self-supervised: pretrained on the run's corpus (pretrain_simclr)
        try:
            results[name] = supervised_baseline(name, clips, probe, config, device, progress)
        except ValueError as err:  # too little data for this baseline: say so in one line
            raise TokenlmError(f"baseline {name}: {err}") from None
    return results


def run(ctx: RunContext) -> None:
    """``tokenlm run``: the baselines the recipe's ``probe.baselines`` lists."""
    probe, config = baseline_configs(ctx)
    if probe.baselines:
        baselines(ctx.run, probe, config, tasks=ctx.tasks(), device=ctx.device, progress=ctx.progress)


def supervised_baseline(name: str, clips: LabelledClips, probe: ProbeConfig, config: BaselinesConfig, device,
                        progress: bool = True) -> dict:
    """RUN/baselines/<name> (vgg or timbre): trained on train, early-stopped on val, scored on
    test with its own classifier; with official folds, also one model per fold."""
    model_config = _model_config(name, clips, config, len(clips.classes))
    train_config = _train_config(clips, probe, config)
    use_folds = config.baseline_folds and probe.folds and clips.has_folds
    stage = Stage(clips.run.baseline(name),
                  config={"model": to_dict(model_config), "train": to_dict(train_config), "folds": use_folds,
                          "classes": clips.classes},
                  inputs={"features": clips.run.features}, lock_root=clips.run.lock_root)

    def make(work: Path) -> dict:
        say(f"baseline {name}: training")
        masks = {s: clips.splits == s for s in SPLITS}
        extra = _artifact_extra(clips, config)
        split_result, model = _fit_supervised(name, model_config, train_config, clips, masks, work, extra, device,
                                              progress)
        folds = None
        if use_folds:
            per_fold = []
            for test_fold, val_fold in fold_assignments(clips.folds.tolist()):
                fold_masks = {"test": clips.folds == test_fold, "val": clips.folds == val_fold}
                fold_masks["train"] = ~(fold_masks["test"] | fold_masks["val"])
                result, _ = _fit_supervised(name, model_config, train_config, clips, fold_masks,
                                            work / fold_folder(test_fold), extra, device, progress,
                                            desc=f"{name} fold {test_fold}")
                per_fold.append({"test_fold": test_fold, "val_fold": val_fold,
                                 **{k: v for k, v in result.items() if k != "history"}})
            folds = summarise_folds(per_fold).to_dict()
        write_json(work / RESULTS, {
            "name": name, "title": title(name, model_config), "kind": SUPERVISED, "status": "ok",
            "dim": model.embed_dim, "test": {k: v for k, v in split_result.items() if k != "history"},
            "folds": folds, **_cost(model, clips), "encoder_train_s": split_result["train_seconds"],
            "probe_fit_s": None, "history": split_result["history"],
        })
        say(f"baseline {name}: test accuracy {pct(split_result.get('accuracy'))} -> {stage.out_dir}")
        return {"accuracy": split_result.get("accuracy")}

    stage.build(f"baseline {name}", make)
    return read_json(stage.out_dir / RESULTS)


def _fit_supervised(name, model_config, train_config, clips: LabelledClips, masks: dict, out: Path, extra: dict,
                    device, progress: bool, desc: str | None = None):
    """Train one CNN on ``masks['train']``, early-stop on val, score test; save into ``out``.

    A model that ``out`` already holds (finished before an interruption) is reused.
    """
    if (out / MODEL_RESULTS).is_file() and (out / MODEL_WEIGHTS).is_file():
        return read_json(out / MODEL_RESULTS), load_model(out)[0]

    class_index = {c: i for i, c in enumerate(clips.classes)}
    targets = np.array([class_index[label] for label in clips.labels])
    pick = {s: np.flatnonzero(masks[s]) for s in SPLITS}
    data = {s: ([clips.normalised[i] for i in pick[s]], targets[pick[s]]) for s in SPLITS}
    torch.manual_seed(train_config.seed)  # the initial weights too are seeded
    model = build_network(name, model_config)
    log = train_classifier(model, data["train"], data["val"], train_config, device, progress, desc=desc or name)
    result = {k: log[k] for k in ("epochs_run", "best_epoch", "best_val_accuracy", "train_seconds", "history")}
    result["val_accuracy"] = result.pop("best_val_accuracy")
    result.update(n_train=len(pick["train"]), n_val=len(pick["val"]), n_test=len(pick["test"]))
    if len(pick["test"]):
        predicted = predict_clips(model, data["test"][0], train_config.crop_frames, device).argmax(1)
        truth = data["test"][1]
        result["accuracy"] = float(np.mean(predicted == truth))
        result["macro_f1"] = float(f1_score(truth, predicted, average="macro", zero_division=0))
        result.update(bootstrap_intervals(truth, predicted, seed=train_config.seed))
    out.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), out, extra=extra)
    write_json(out / MODEL_RESULTS, result)  # last: its presence means the model is complete
    return result, model


def pretrain_simclr(run: RunDir, probe: ProbeConfig, config: BaselinesConfig, device, progress: bool = True) -> Path:
    """RUN/baselines/simclr: the VGG trunk trained with NT-Xent on the train split of the run's
    pretraining features, like every self-supervised model of the run (labels, if the corpus
    has any, are never read). The probe embeds each task's clips with it
    (``evaluation.representations.simclr_embeddings``) and reads them with the linear probe."""
    meta = read_feature_meta(run.features)
    crop_frames = _crop_frames(meta.config.frame_rate, config)
    trunk_config = VGGConfig(n_mels=meta.config.n_mels, n_classes=0, channels=config.vgg_channels,
                             convs_per_block=config.vgg_convs_per_block, dropout=config.dropout)
    simclr_config = SimCLRConfig(crop_frames=crop_frames, batch_size=config.simclr_batch_size,
                                 epochs=config.simclr_epochs, lr=config.lr, weight_decay=config.weight_decay,
                                 temperature=config.simclr_temperature,
                                 projection_dim=config.simclr_projection_dim, seed=probe.seed,
                                 view_offset_frames=None if config.simclr_view_offset is None else
                                 round(config.simclr_view_offset * meta.config.frame_rate))
    augment_config = AugmentConfig()
    stage = Stage(run.baseline("simclr"),
                  config={"trunk": to_dict(trunk_config), "simclr": simclr_config.key(),
                          "augment": to_dict(augment_config)},
                  inputs={"features": run.features}, lock_root=run.lock_root)

    def make(work: Path) -> dict:
        train_clips = [frames for _, frames in RaggedSplit(run.features, "train", "float16", width=meta.config.n_mels)]
        say(f"SimCLR: contrastive training on {len(train_clips)} clips of the pretraining corpus (no labels)")
        torch.manual_seed(probe.seed)
        model = SimCLRModel(VGGish(trunk_config), simclr_config.projection_dim)
        try:
            log = train_simclr(model, train_clips, meta.norm_mean, meta.norm_std, simclr_config, augment_config,
                               device, progress)
        except ValueError as err:  # too little audio: say so in one line
            raise TokenlmError(f"SimCLR: {err}") from None
        trunk = model.trunk.cpu()
        save_model(trunk, work, extra={**_feature_record(meta), "crop_frames": crop_frames,
                                       "simclr": to_dict(simclr_config)})
        one_second = (1, meta.config.n_mels, max(1, round(meta.config.frame_rate)))
        write_json(work / METRICS, {"train_seconds": log["train_seconds"], "train_clips": len(train_clips),
                                    "encoder_params": count_parameters(trunk),
                                    "flops_per_second": count_flops(trunk, one_second, method="embed"),
                                    "history": log["history"]})
        say(f"SimCLR: trained in {log['train_seconds']:.0f} s -> {stage.out_dir}")
        return {"train_seconds": log["train_seconds"]}

    return stage.build("SimCLR", make)


def _crop_frames(frame_rate: float, config: BaselinesConfig) -> int:
    return max(1, round(config.crop_seconds * frame_rate))


def _train_config(clips: LabelledClips, probe: ProbeConfig, config: BaselinesConfig):
    return ClassifierTraining(crop_frames=_crop_frames(clips.frame_rate, config), batch_size=config.batch_size, epochs=config.epochs,
                       patience=config.patience, lr=config.lr, weight_decay=config.weight_decay, seed=probe.seed)


def _model_config(name: str, clips: LabelledClips, config: BaselinesConfig, n_classes: int):
    return network_config(name, clips.n_mels, n_classes, config)


def _cost(model, clips: LabelledClips, method: str = "forward") -> dict:
    one_second = max(1, round(clips.frame_rate))
    return {"encoder_params": count_parameters(model),
            "flops_per_second": count_flops(model, (1, clips.n_mels, one_second), method=method)}


def _artifact_extra(clips: LabelledClips, config: BaselinesConfig) -> dict:
    """What a saved baseline needs to be used on new audio: its input and normalisation."""
    return {**_feature_record(clips.feature_meta), "classes": clips.classes,
            "crop_frames": _crop_frames(clips.frame_rate, config)}


def _feature_record(meta) -> dict:
    """The log-mel settings and normalisation a saved CNN reads its input with."""
    keys = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "log_floor")
    return {"features": {k: getattr(meta.config, k) for k in keys}, "norm": meta.raw["norm"]}


def say(text: str) -> None:
    click.echo(text, err=True)


def baseline_configs(ctx: RunContext, overrides: dict | None = None) -> tuple[ProbeConfig, BaselinesConfig]:
    return configs(ctx.section(SECTION), overrides)
