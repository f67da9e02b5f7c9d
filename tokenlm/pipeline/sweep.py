"""Stage 7: how much does a codebook of K codes lose? One autoencoder, one codebook per K.

For each K: bottleneck quantisation error, log-mel reconstruction through the codes (beside
the autoencoder's own error, the ceiling), code usage, purity/PNMI against clip labels, and
optionally a small LM, linear probes and vocoder resynthesis per K. Every per-K artifact is
a cached stage (RUN/tokenizer/k{K}, RUN/tokens/k{K}, RUN/sweep/k{K}/...), so adding a K to
the list computes only that K.

Writes RUN/sweep/: sweep.csv, sweep.json, one PNG per group of metrics (metric against K on
a log axis) and report.md, which names the K where returns flatten.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from tokenlm.core.config import load_yaml, to_dict
from tokenlm.core.errors import ConfigError, TokenlmError
from tokenlm.core.extras import pyplot, require
from tokenlm.core.fileio import read_json, write_json
from tokenlm.core.runtime import pick_device
from tokenlm.data.store import RaggedSplit
from tokenlm.pipeline.pretrain import lm_configs, pretrain
from tokenlm.pipeline.probe import probe
from tokenlm.pipeline.probe_config import configs
from tokenlm.pipeline.registry import RunContext
from tokenlm.pipeline.tokenize import encode_run_stage, encode_task, fit_codebook_stage, tokenizer_config
from tokenlm.pipeline.vocoder import VocoderConfig, train_vocoder
from tokenlm.reporting.figures import panel_grid
from tokenlm.run.artifacts import Stage
from tokenlm.run.rundir import (
    METRICS,
    REPORT,
    RESULTS,
    SWEEP_JSON,
    SWEEP_TABLE,
    RunDir,
    figure_file,
    is_finished,
    read_tokens_meta,
)
from tokenlm.tokenizer.codebook import CodebookConfig, label_code_agreement


@dataclass(frozen=True)
class SweepConfig:
    """The ``sweep:`` recipe section."""

    codebook_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    with_lm: bool = False
    with_probe: bool = False
    with_vocoder: bool = False
    lm_steps: int | None = None  # cap on each K's LM training steps (None: the recipe's lm.training.steps)
    # Returns flatten at the smallest K from which one more doubling of K gains less than this
    # share of what a doubling gained at the smallest K.
    flat_fraction: float = 0.25

    def __post_init__(self):
        if not self.codebook_sizes or min(self.codebook_sizes) < 2:
            raise ValueError("codebook_sizes needs sizes of at least 2")


# Groups of metrics: one figure each. (column, label, higher is better)
METRIC_GROUPS = {
    "distortion": [("relative_quantisation_error", "bottleneck quantisation error (rel.)", False),
                   ("recon_rmse_db", "log-mel RMSE through codes (dB)", False)],
    "usage": [("used_codes", "used codes", True), ("perplexity", "code perplexity", True),
              ("bits_per_second", "entropy bitrate (bit/s)", True)],
    "labels": [("purity", "code purity", True), ("pnmi", "PNMI", True)],
    "lm": [("lm_val_perplexity", "LM val perplexity", False), ("lm_bits_per_second", "LM bits per second", False)],
    "probe": [("probe_lm_accuracy", "LM probe accuracy", True), ("probe_bag_accuracy", "bag-of-codes accuracy", True),
              ("probe_quantised_accuracy", "quantised bottleneck accuracy", True)],
    "vocoder": [("vocoder_logmel_db", "resynthesis log-mel distance (dB)", False),
                ("griffinlim_logmel_db", "Griffin-Lim log-mel distance (dB)", False)],
}


def sweep(run: str | Path, config: SweepConfig = SweepConfig(), codebook: CodebookConfig = CodebookConfig(), *,
          recipe: str | Path | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Measure every K of ``config.codebook_sizes`` on the run's autoencoder; returns RUN/sweep.
    ``recipe`` gives the sections of the per-K LM, probe and vocoder."""
    ctx = RunContext(RunDir(run), load_yaml(recipe) if recipe else {}, Path(recipe) if recipe else None,
                     device=device, progress=progress)
    return _sweep(ctx, config, codebook)


def _sweep(ctx: RunContext, config: SweepConfig, codebook: CodebookConfig) -> Path:
    run = ctx.run
    require("matplotlib", "report", "the sweep's plots")  # before the hours of work, not after
    if not is_finished(run.tokenizer):
        raise TokenlmError(f"{run.root} has no trained autoencoder: run `tokenlm tokenize {run.root} --data DIR` first")
    torch_device = pick_device(ctx.device)
    tasks = ctx.tasks()
    # Every K at the recipe's codes per patch (tokenizer.levels / groups), so the run's own
    # codebook is one of the sweep's, never refitted with another shape.
    shape = tokenizer_config(ctx.section("tokenizer"), {})
    if shape.codes_per_patch > 1 and config.with_vocoder:
        raise ConfigError(f"sweep.with_vocoder: the vocoder reads one code per patch, tokenizer.levels/groups give "
                          f"{shape.codes_per_patch}: set it false")
    rows = []
    sizes = sorted(config.codebook_sizes)
    for i, k in enumerate(sizes, 1):
        click.secho(f"-- K={k} ({i}/{len(sizes)})", bold=True, err=True)
        started = time.time()
        fit_codebook_stage(run, k, codebook, device=torch_device, levels=shape.levels, groups=shape.groups,
                           whiten=shape.whiten)
        encode_run_stage(run, k, device=torch_device, progress=ctx.progress)
        for task in tasks:
            encode_task(run, task, k, device=torch_device, progress=ctx.progress)
        row = codebook_row(run, k, labelled=tasks[0].data)
        for enabled, what, extra in _optional_columns(config):
            if enabled:
                _progress(k, what, started)
                row.update(extra(ctx, k))
        _progress(k, f"done ({i}/{len(sizes)})", started)
        rows.append(row)

    inputs = {f"k{k}": run.tokens(k) for k in config.codebook_sizes}
    stage = Stage(run.sweep, config=to_dict(config), inputs=inputs, lock_root=run.lock_root)
    work = stage.start()
    write_sweep_outputs(rows, config, work)
    stage.finish()
    click.echo(f"sweep: {stage.out_dir / REPORT}")
    return stage.out_dir


def _progress(k: int, what: str, started: float) -> None:
    """One plain line per step of a K (a sweep is minutes per K, and quiet in between)."""
    click.echo(f"   K={k}: {what} [{time.time() - started:.0f} s]", err=True)


def codebook_row(run: RunDir, k: int, labelled: RunDir | None = None) -> dict:
    """The codebook's own figures plus code/label agreement on held-out tokens (val, else
    train) of ``labelled`` (the first task; default: the run): on the train split a large
    codebook scores well by memorising clips."""
    metrics = read_json(run.codebook(k) / METRICS)
    row = {key: metrics[key] for key in (
        "k", "inertia", "relative_quantisation_error", "recon_rmse_db", "autoencoder_recon_rmse_db",
        "used_codes", "dead_codes", "perplexity", "entropy_bits", "bits_per_second")}
    # Codes per patch and the bits per second of audio they cost (levels x log2 K x code
    # rate): configurations are compared at equal bitrate (older metrics: one level).
    row["levels"] = metrics.get("levels", 1)
    row["nominal_bits_per_second"] = metrics.get("nominal_bits_per_second",
                                                 math.log2(k) * metrics.get("code_rate", float("nan")))
    labelled = labelled or run
    levels = read_tokens_meta(labelled.tokens(k)).levels
    tokens = RaggedSplit(labelled.tokens(k), "val", "uint16", width=levels)
    if len(tokens) == 0:
        tokens = RaggedSplit(labelled.tokens(k), "train", "uint16", width=levels)
    labels = np.repeat(np.array([str(r["label"]) for r in tokens.rows]), [r["length"] for r in tokens.rows])
    if len(set(labels)) > 1 and all(r["label"] is not None for r in tokens.rows):
        codes = np.asarray(tokens.data)  # agreement of the first level's codes (the one-code reference)
        row.update(label_code_agreement(codes if levels == 1 else codes[:, 0], labels, k))
    return row


def _optional_columns(config: SweepConfig):
    """(enabled, what it does, function(ctx, k) -> dict of columns) for each option."""
    return [(config.with_lm or config.with_probe, "LM", functools.partial(lm_columns, steps=config.lm_steps)),
            (config.with_probe, "probe", probe_columns),
            (config.with_vocoder, "vocoder", vocoder_columns)]


def lm_columns(ctx: RunContext, k: int, *, steps: int | None = None) -> dict:
    """A code LM per K (the recipe's lm section, ``steps`` capped); its val perplexity and bits
    per second, beside the unigram and bigram references on the same codes."""
    model, training = lm_configs(ctx.section("lm"))
    if steps:
        training = dataclasses.replace(training, steps=steps, warmup_steps=min(training.warmup_steps, steps // 10),
                                       eval_every=min(training.eval_every, steps))
    out = pretrain(ctx.run, model, training, k=k, device=ctx.device, progress=False, out_dir=ctx.run.sweep_k(k).lm)
    metrics = read_json(out / METRICS)
    split = "val" if "val_ppl" in metrics else "test"
    return {"lm_val_perplexity": metrics[f"{split}_ppl"], "lm_bits_per_second": metrics[f"{split}_bits_per_s"],
            "lm_unigram_perplexity": metrics["unigram_ppl"], "lm_bigram_perplexity": metrics["bigram_ppl"]}


def probe_columns(ctx: RunContext, k: int) -> dict:
    """Linear-probe test accuracy of that K's LM (best layer and pooling on val) and of its bag
    of codes, each with its 95% interval (``<column>_ci_lo``, ``<column>_ci_hi``), on each task
    (columns suffixed with the task's name when there are several)."""
    config, baseline_config = configs(ctx.section("probe"), {"codebook_size": k, "baselines": ()})
    tasks = ctx.tasks()
    columns = {}
    for task in tasks:
        out = probe(ctx.run.root, config, baseline_config, task=task, device=ctx.device, progress=False,
                    lm_dir=ctx.run.sweep_k(k).lm, out_dir=ctx.run.sweep_k(k).probe_task(task.name))
        results = read_json(out / RESULTS)
        rows = {row["name"]: row for row in results["rows"]}
        suffix = f"_{task.name}" if len(tasks) > 1 else ""
        columns.update({**_accuracy(f"probe_lm_accuracy{suffix}", rows.get("lm_best")),
                        **_accuracy(f"probe_bag_accuracy{suffix}", rows.get("bag_of_codes")),
                        **_accuracy(f"probe_quantised_accuracy{suffix}", rows.get("quantised")),
                        f"probe_lm_pooling{suffix}": (rows.get("lm_best") or {}).get("pooling"),
                        # the figure's reference lines: 1 / classes and the log-mel statistics' probe
                        f"probe_chance{suffix}": 1 / max(1, len(results["dataset"]["classes"])),
                        f"probe_floor{suffix}": _accuracy("floor", rows.get("logmel_stats"))["floor"]})
    return columns


def _accuracy(column: str, row: dict | None) -> dict:
    """A row's test accuracy (folds: the mean) and its interval as three columns."""
    scores = None
    if row and row.get("status") == "ok":
        scores = row.get("test") or row.get("folds")
    scores = scores or {}
    low, high = scores.get("accuracy_ci") or (None, None)
    return {column: scores.get("accuracy", scores.get("accuracy_mean")), f"{column}_ci_lo": low,
            f"{column}_ci_hi": high}


def vocoder_columns(ctx: RunContext, k: int) -> dict:
    """A vocoder per K (the recipe's vocoder section); its resynthesis distances on val clips."""
    out = train_vocoder(ctx.run, VocoderConfig.from_section(ctx.section("vocoder")), codebook_size=k, device=ctx.device,
                        out_dir=ctx.run.sweep_k(k).vocoder)
    metrics = read_json(out / METRICS)
    # The decoders side by side (tokenlm.evaluation.audio_quality): WaveNet and the Griffin-Lim
    # reference on every measure this installation makes.
    return {key: value for key, value in metrics.items() if isinstance(value, float)
            and key.startswith(("vocoder_", "griffinlim_", "codebook_", "mulaw_"))}


def write_sweep_outputs(rows: list[dict], config: SweepConfig, out: Path) -> None:
    """sweep.csv, sweep.json, one figure per metric group, report.md."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / SWEEP_TABLE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    # Returns are judged on what the codes preserve. Code usage grows with K by construction,
    # and the LM's per-code figures describe a different prediction task at every K.
    groups = metric_groups(rows)
    flat = {col: flattening_k(rows, col, higher, config.flat_fraction)
            for name, group in groups.items() if name not in ("usage", "lm")
            for col, _, higher in group if all(col in r for r in rows)}
    write_json(out / SWEEP_JSON, {"config": to_dict(config), "rows": rows, "returns_flatten_at": flat})
    figures = [name for name, group in groups.items() if _plot_group(rows, group, out / figure_file(name))]
    (out / REPORT).write_text(_report(rows, groups, flat, figures, config.flat_fraction))


def draw_figures(rows: list[dict], out: Path, prefix: str = "") -> list[str]:
    """Each metric group's figure as ``out/{prefix}{group}.png``; the names of those drawn. The
    report redraws them from sweep.json, so a run swept before the grid layout reads at 1280 px too."""
    out.mkdir(parents=True, exist_ok=True)
    return [name for name, group in metric_groups(rows).items()
            if _plot_group(rows, group, out / figure_file(prefix + name))]


def metric_groups(rows: list[dict]) -> dict:
    """METRIC_GROUPS, the probe's group widened to one column per task in a run of several."""
    per_task = [c for c in rows[0] if c.startswith(("probe_lm_accuracy_", "probe_bag_accuracy_"))
                and not c.endswith(("_ci_lo", "_ci_hi"))]
    if not per_task:
        return METRIC_GROUPS
    titles = {"probe_lm_accuracy_": "LM probe accuracy", "probe_bag_accuracy_": "bag-of-codes accuracy"}
    return {**METRIC_GROUPS, "probe": [(c, f"{titles[p]}: {c[len(p):]}", True)
                                       for c in per_task for p in titles if c.startswith(p)]}


STILL_IMPROVING = "still improving at the largest K"


NO_STEADY_GAIN = "no steady gain with K over this range"


def flattening_k(rows: list[dict], column: str, higher_is_better: bool, fraction: float) -> int | str:
    """The smallest K from which the gain per doubling of K, up to the next K of the sweep, is
    below ``fraction`` of the gain per doubling between the first two K; or why there is none."""
    if len(rows) < 2:
        return NO_STEADY_GAIN
    sign = 1 if higher_is_better else -1
    gains = [sign * (b[column] - a[column]) / math.log2(b["k"] / a["k"]) for a, b in zip(rows, rows[1:])]
    if not gains[0] > 0:
        return NO_STEADY_GAIN
    for row, gain in zip(rows, gains):
        if gain < fraction * gains[0]:
            return row["k"]
    return STILL_IMPROVING


def _plot_group(rows: list[dict], group: list[tuple], path: Path) -> bool:
    metrics = [(c, label) for c, label, _ in group if all(c in r for r in rows)]
    if not metrics:
        return False
    plt = pyplot()  # matplotlib (tokenlm[report]) on Agg

    ks = [r["k"] for r in rows]
    fig, axes = panel_grid(plt, len(metrics), 4.2, 3.4)
    for ax, (column, label) in zip(axes, metrics):
        values = np.array([np.nan if r[column] is None else r[column] for r in rows], dtype=float)
        errors = _error_bars(rows, column, values)
        if errors is None:
            ax.plot(ks, values, "o-")
        else:  # the 95% interval as error bars
            ax.errorbar(ks, values, yerr=errors, fmt="o-", capsize=3)
            label += " (95% CI)"
        if column == "recon_rmse_db":  # the ceiling: the autoencoder without quantisation
            ax.axhline(rows[0]["autoencoder_recon_rmse_db"], color="grey", ls="--", label="no quantisation")
            ax.legend()
        references = reference_lines(rows, column)
        for value, name, colour, style in references:
            ax.axhline(value, color=colour, ls=style, label=name)
        curves = reference_curves(rows, column)
        for values, name, colour, style in curves:
            ax.plot(ks, values, color=colour, ls=style, label=name)
        if references or curves:
            ax.legend(fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("codebook size K")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def reference_lines(rows: list[dict], column: str) -> list[tuple[float, str, str, str]]:
    """(value, label, colour, style) of the horizontal lines a probe accuracy is read against:
    chance (1 / classes) and the log-mel floor (the same at every K, so the first row's)."""
    if not column.startswith(("probe_lm_accuracy", "probe_bag_accuracy")):
        return []
    suffix = column.removeprefix("probe_lm_accuracy").removeprefix("probe_bag_accuracy")
    lines = [(rows[0].get(f"probe_chance{suffix}"), "chance", "lightgrey", ":"),
             (rows[0].get(f"probe_floor{suffix}"), "log-mel floor", "grey", "--")]
    return [line for line in lines if line[0] is not None]


def reference_curves(rows: list[dict], column: str) -> list[tuple[list, str, str, str]]:
    """(values per K, label, colour, style) of what the LM's perplexity and bits per second are
    read against, which change with K: chance (uniform over K) and the unigram and bigram count
    models (bits per second through the code rate: the codebook's bit/s over its bits per code)."""
    if column == "lm_val_perplexity":
        rates = None
    elif column == "lm_bits_per_second" and all(r.get("entropy_bits") for r in rows):
        rates = [r["bits_per_second"] / r["entropy_bits"] for r in rows]  # codes per second
    else:
        return []

    def in_column_units(perplexities: list) -> list:
        return perplexities if rates is None else [math.log2(p) * rate for p, rate in zip(perplexities, rates)]

    curves = [(in_column_units([r["k"] for r in rows]), "chance (uniform over K)", "lightgrey", ":")]
    for key, name, colour, style in (("lm_unigram_perplexity", "unigram", "grey", "--"),
                                     ("lm_bigram_perplexity", "bigram", "black", "-.")):
        if all(r.get(key) is not None for r in rows):
            curves.append((in_column_units([r[key] for r in rows]), name, colour, style))
    return curves


def _error_bars(rows: list[dict], column: str, values: np.ndarray) -> np.ndarray | None:
    """(2, len(rows)) distances from each value down to ``<column>_ci_lo`` and up to
    ``<column>_ci_hi``; None when the column has no interval (a missing one draws no bar)."""
    bounds = [(r.get(f"{column}_ci_lo"), r.get(f"{column}_ci_hi")) for r in rows]
    if all(lo is None for lo, _ in bounds):
        return None
    low, high = (np.array([np.nan if b is None else b for b in side], dtype=float) for side in zip(*bounds))
    return np.nan_to_num(np.stack([values - low, high - values]))


def _report(rows: list[dict], groups: dict, flat: dict, figures: list[str], fraction: float) -> str:
    shown = [("k", "K", "{}"), ("used_codes", "used", "{}"), ("perplexity", "perplexity", "{:.1f}"),
             ("bits_per_second", "bit/s", "{:.0f}"), ("relative_quantisation_error", "quant. err (rel.)", "{:.3f}"),
             ("recon_rmse_db", "log-mel RMSE dB", "{:.2f}"), ("purity", "purity", "{:.3f}"), ("pnmi", "PNMI", "{:.3f}"),
             ("lm_val_perplexity", "LM ppl", "{:.1f}"), ("lm_bits_per_second", "LM bit/s", "{:.0f}"),
             ("probe_lm_accuracy", "LM probe acc", "{:.3f}"), ("probe_bag_accuracy", "bag acc", "{:.3f}"),
             ("vocoder_logmel_db", "vocoder dB", "{:.2f}"), ("vocoder_mrstft", "vocoder MR-STFT", "{:.3f}"),
             ("griffinlim_logmel_db", "Griffin-Lim dB", "{:.2f}"), ("griffinlim_mrstft", "Griffin-Lim MR-STFT", "{:.3f}"),
             ("vocoder_stoi", "vocoder STOI", "{:.3f}"), ("griffinlim_stoi", "Griffin-Lim STOI", "{:.3f}")]
    if groups["probe"] is not METRIC_GROUPS["probe"]:  # one column per task
        shown[-1:-1] = [(c, label.replace(" accuracy", ""), "{:.3f}") for c, label, _ in groups["probe"]]
    shown = [s for s in shown if all(s[0] in r for r in rows)]
    lines = ["# Codebook-size sweep\n",
             f"One autoencoder, one k-means codebook per K. The autoencoder alone (no quantisation) "
             f"reconstructs log-mel patches to {rows[0]['autoencoder_recon_rmse_db']:.2f} dB RMSE: the ceiling.\n",
             "| " + " | ".join(s[1] for s in shown) + " |", "|" + "---:|" * len(shown)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, col, fmt) for col, _, fmt in shown) + " |")
    lines.append(f"\nWhere returns flatten: the smallest K from which doubling K gains less than "
                 f"{fraction:.0%} of what a doubling gained at the smallest K.\n")
    labels = {c: label for group in groups.values() for c, label, _ in group}
    for column, k in flat.items():
        lines.append(f"- {labels[column]}: " + (f"K = {k}" if isinstance(k, int) else k))
    if any("lm_val_perplexity" in r for r in rows):
        lines.append("\nThe LM's perplexity per code grows with K because each code is one of more choices; "
                     "its bits per second of audio compare across K: how much information per second the LM "
                     "cannot predict, with the unigram and bigram references in sweep.csv.")
    if any(key.endswith("_ci_lo") and value is not None for r in rows for key, value in r.items()):
        lines.append("\nProbe accuracies are on the test split (folds: their mean) with a 95% interval in brackets "
                     "(test split: bootstrap over clips; folds: t-interval of the mean); the figure draws it as "
                     "error bars. Differences inside the intervals do not mean much.")
    lines.append("\nCode purity and PNMI (HuBERT's unit-quality measures; each code inherits its clip's label) "
                 "are measured on the val split.")
    lines.append("")
    lines += [f"![{name}]({figure_file(name)})" for name in figures]
    return "\n".join(lines) + "\n"


def _cell(row: dict, column: str, fmt: str) -> str:
    """A value, followed by its 95% interval when the row has one: "0.625 [0.571, 0.679]"."""
    low, high = row.get(f"{column}_ci_lo"), row.get(f"{column}_ci_hi")
    text = _fmt(fmt, row.get(column))
    return text if low is None or high is None else f"{text} [{_fmt(fmt, low)}, {_fmt(fmt, high)}]"


def _fmt(fmt: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def run(ctx: RunContext) -> None:
    sweep_from_context(ctx)


def sweep_from_context(ctx: RunContext, overrides: dict | None = None) -> Path:
    return _sweep(ctx, ctx.config(SweepConfig, "sweep", overrides), ctx.config(CodebookConfig, "codebook"))
