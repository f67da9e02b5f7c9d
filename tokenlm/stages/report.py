"""RUN/report.md: the whole run at a glance, from whatever artifacts the run has.

Each section reads one stage's artifacts and is left out when the stage has not run, so
the report can be rebuilt at any point (``tokenlm report RUN``) and ``tokenlm run`` ends with it.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import click

from tokenlm.evaluation.audio_quality import decoder_table
from tokenlm.fileio import read_json, read_jsonl
from tokenlm.rundir import (
    MANIFEST, META, METRICS, REPORT, SAMPLES, SPLITS, SUMMARY, TRAIN_LOG, RunDir, figure_file,
)


def write_report(run: str | Path) -> Path:
    """Write RUN/report.md (and its figures under RUN/report_files/); return its path."""
    run = RunDir(run)
    sections = [f"# tokenlm run: {run.root.name}\n"]
    for section in (dataset_section, tokenizer_section, lm_section, probe_section, vocoder_section, sweep_section):
        text = section(run)
        if text:
            sections.append(text)
    run.report.write_text("\n".join(sections))
    return run.report


def dataset_section(run: RunDir) -> str | None:
    if not run.manifest.is_file():
        return None
    rows = read_jsonl(run.manifest)
    ok = [r for r in rows if r["status"] == "ok"]
    meta = read_json(run.features / META) if (run.features / META).is_file() else {}
    labels = sorted({r["label"] for r in ok if r["label"] is not None}, key=str)
    lines = ["## Dataset\n",
             f"Source `{meta.get('data', '?')}` (layout: {meta.get('layout', '?')}): {len(rows)} clips, "
             f"{len(ok)} usable, {len(rows) - len(ok)} skipped; {len(labels)} classes; "
             f"{sum(r['duration'] for r in ok) / 60:.1f} min of audio.\n"]
    if meta:
        lines.append(f"Features: {meta['sample_rate']} Hz, {meta['n_mels']} mel bins, hop {meta['hop_length']} "
                     f"samples, {meta['patch_frames']}-frame patches = {meta['sample_rate'] / meta['hop_length'] / (meta.get('patch_hop') or meta['patch_frames']):g} tokens/s.\n")
    counts = Counter((r["label"], r["split"]) for r in ok)
    lines.append("| class | " + " | ".join(SPLITS) + " |")
    lines.append("|---|" + "---:|" * len(SPLITS))
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(str(counts.get((label, s), 0)) for s in SPLITS) + " |")
    totals = Counter(r["split"] for r in ok)
    lines.append("| **all** | " + " | ".join(f"**{totals.get(s, 0)}**" for s in SPLITS) + " |\n")
    reasons = Counter(r["reason"] for r in rows if r["status"] != "ok")
    if reasons:
        lines.append(f"Skipped clips (see {MANIFEST}):\n")
        lines += [f"- {n} x {reason}" for reason, n in reasons.most_common(10)]
        lines.append("")
    return "\n".join(lines)


def tokenizer_section(run: RunDir) -> str | None:
    if not (run.tokenizer / METRICS).is_file():
        return None
    ae = read_json(run.tokenizer / METRICS)
    lines = ["## Tokenizer\n",
             f"Autoencoder: val reconstruction {ae['recon_rmse_db']:.2f} dB RMSE, "
             f"{ae['recon_relative_mse']:.3f} of the patch variance (best epoch {ae['best_epoch']} of {ae['epochs_run']}).\n",
             "| K | used codes | perplexity | bits/s | quantisation error (rel.) | log-mel RMSE through codes (dB) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for k in run.codebooks():
        m = read_json(run.codebook(k) / METRICS)
        lines.append(f"| {m['k']} | {m['used_codes']} | {m['perplexity']:.1f} | {m['bits_per_second']:.0f} | "
                     f"{m['relative_quantisation_error']:.3f} | {m['recon_rmse_db']:.2f} |")
    return "\n".join(lines) + "\n"


def lm_section(run: RunDir) -> str | None:
    if not (run.lm / METRICS).is_file():
        return None
    m = read_json(run.lm / METRICS)
    split = m.get("reference_split", "val")
    rate = m["code_rate"]
    lines = ["## Code language model\n",
             f"GPT-2, {m['parameters'] / 1e6:.2f} M parameters, trained {m['steps']} steps (kept step "
             f"{m['best_step']}) at {m.get('tokens_per_s') or 0:.0f} codes/s. Perplexity per code on the "
             f"{split} split, against add-one smoothed count models of the train codes:\n",
             f"| model | {split} perplexity | bits per second of audio |", "|---|---:|---:|"]
    for name, ppl in (("GPT code LM", m.get(f"{split}_ppl")), ("bigram", m.get("bigram_ppl")),
                      ("unigram", m.get("unigram_ppl"))):
        if ppl:
            lines.append(f"| {name} | {ppl:.2f} | {math.log2(ppl) * rate:.0f} |")
    with open(run.lm / TRAIN_LOG, newline="") as f:
        figure = _plot_curves(list(csv.DictReader(f)), run.report_files / figure_file("lm_loss"))
    if figure:
        lines.append(f"\n![LM loss]({figure.relative_to(run.root)})")
    return "\n".join(lines) + "\n"


def probe_section(run: RunDir) -> str | None:
    """The summary across tasks (when there are several), then each task's probe table."""
    tasks = [p.name for p in sorted(run.probe.glob("*")) if (p / REPORT).is_file()]
    summary = run.probe / f"{SUMMARY}.json"
    if summary.is_file():  # its order: the recipe's
        listed = read_json(summary)["tasks"]
        tasks = [t for t in listed if t in tasks] + [t for t in tasks if t not in listed]
    if not tasks:
        return None
    parts = ["## Linear probe and baselines\n"]
    if len(tasks) > 1:
        parts.append(_include(run.probe / f"{SUMMARY}.md", "### Every task\n") or "")
    parts += [_include(run.probe_task(t) / REPORT, f"### Task: {t}\n") for t in tasks]
    return "\n".join(parts)




def vocoder_section(run: RunDir) -> str | None:
    if not (run.vocoder / METRICS).is_file():
        return None
    m = read_json(run.vocoder / METRICS)
    synthesis = m.get("resynthesis", {})
    lines = ["## WaveNet decoder\n",
             f"{m['parameters'] / 1e6:.2f} M parameters, receptive field {m['receptive_field']} samples, "
             f"{m['steps']} steps. Measured on {synthesis.get('clips', '?')} val clips, "
             f"{synthesis.get('seconds_per_clip', '?')} s each; generation ran at "
             f"{synthesis.get('rtf_per_clip', float('nan')):.1f} s per second of audio per clip.\n",
             f"Val loss {m.get('val_bits_per_sample') or float('nan'):.3f} bits per sample. Each decoder against "
             f"the input:\n", *decoder_table(m)]
    names = {"stoi": "STOI", "griffinlim": "The Griffin-Lim reference"}
    lines += [f"\n{names.get(name, name)} left out: {why}." for name, why in m.get("skipped", {}).items()]
    samples = sorted((run.vocoder / SAMPLES).glob("*.wav")) + sorted((run.vocoder / SAMPLES).glob("*/*.wav")) \
        + sorted(run.generated.glob("*.wav"))
    if samples:
        lines.append("\nAudio examples:\n")
        lines += [f"- [{p.name}]({p.relative_to(run.root)})" for p in samples]
    return "\n".join(lines) + "\n"


def sweep_section(run: RunDir) -> str | None:
    text = _include(run.sweep / REPORT, "## Codebook-size sweep\n")
    if text is None:
        return None
    # The sweep's figures sit beside its report: make their links relative to RUN.
    folder = run.sweep.relative_to(run.root).as_posix()
    return text.replace("](", f"]({folder}/").replace(f"]({folder}/http", "](http")


def _include(path: Path, heading: str) -> str | None:
    if not path.is_file():
        return None
    body = path.read_text().strip().splitlines()
    if body and body[0].startswith("# "):
        body = body[1:]  # the sub-report's own title
    return heading + "\n".join(body) + "\n"


def _plot_curves(rows: list[dict], path: Path) -> Path | None:
    """Train and val loss against step, as a PNG."""
    steps = [int(r["step"]) for r in rows if r.get("loss") not in (None, "")]
    if len(steps) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [float(r["loss"]) for r in rows if r.get("loss") not in (None, "")], label="train")
    evals = [r for r in rows if r.get("val_loss") not in (None, "")]
    if evals:
        ax.plot([int(r["step"]) for r in evals], [float(r["val_loss"]) for r in evals], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/code)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@click.command("report")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
def command(run):
    """Rebuild RUN/report.md from the run's artifacts."""
    click.echo(f"report: {write_report(run)}")
