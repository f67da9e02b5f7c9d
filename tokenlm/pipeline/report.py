"""RUN/report.md and RUN/report.html: the whole run at a glance, from whatever artifacts the run has.

Each section reads one stage's artifacts and is left out when the stage has not run, so
the report can be rebuilt at any point (``tokenlm report RUN``) and ``tokenlm run`` ends with it.
report.html is the same markdown as a page with audio players; both reference the run's
figures (report_files/, sweep/, scale/) and wavs by paths relative to RUN.
"""

from __future__ import annotations

import csv
import html
import math
from collections import Counter
from pathlib import Path

from tokenlm.core.extras import pyplot
from tokenlm.core.fileio import read_json, read_jsonl
from tokenlm.core.outputs import publish_text
from tokenlm.evaluation.audio_quality import decoder_table
from tokenlm.reporting.html import write_html
from tokenlm.reporting.listening import listening_section, other_audio_section
from tokenlm.run import lock as runlock
from tokenlm.run.rundir import (
    CONFIG,
    MANIFEST,
    META,
    METRICS,
    REPORT,
    RESULTS,
    SAMPLES,
    SPLITS,
    SUMMARY,
    SWEEP_JSON,
    TRAIN_LOG,
    RunDir,
    as_run,
    figure_file,
)


def write_report(run: str | Path) -> Path:
    """Write RUN/report.md, its figures under RUN/report_files/ and RUN/report.html; return
    report.md's path."""
    run = as_run(run)
    title = f"tokenlm run: {run.root.name}"
    with runlock.holding(run.lock_root):  # read finished stages and publish, one command at a time
        sections = [f"# {title}\n"]
        for section in (dataset_section, tokenizer_section, lm_section, probe_section, vocoder_section,
                        rawlm_section, sweep_section, scale_section):
            text = section(run)
            if text:
                sections.append(text)
        rest = other_audio_section(run, "\n".join(sections))  # every audio file the run made gets a player
        if rest:
            sections.append(rest)
        publish_text(run.report, "\n".join(sections), legacy=lambda path: _starts_with(path, f"# {title}\n"))
        html_title = f"<title>{html.escape(title)}</title>"
        write_html(run.report, title, legacy=lambda path: html_title in path.read_text(errors="replace"))
    return run.report


def _starts_with(path: Path, text: str) -> bool:
    """Whether ``path`` is a report of tokenlm from before outputs were recorded (its title line)."""
    with open(path, errors="replace") as f:
        return f.read(len(text)) == text


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
             f"GPT-2, {m['parameters'] / 1e6:.2f} M parameters (the LM alone{_probe_count_note(run)}), trained "
             f"{m['steps']} steps (kept step {m['best_step']}) at {m.get('tokens_per_s') or 0:.0f} codes/s. "
             f"Perplexity per code on the {split} split, against add-one smoothed count models of the train codes:\n",
             f"| model | {split} perplexity | bits per second of audio |", "|---|---:|---:|"]
    for name, ppl in (("GPT code LM", m.get(f"{split}_ppl")), ("bigram", m.get("bigram_ppl")),
                      ("unigram", m.get("unigram_ppl"))):
        if ppl:
            lines.append(f"| {name} | {ppl:.2f} | {math.log2(ppl) * rate:.0f} |")
    with open(run.lm / TRAIN_LOG, newline="") as f:
        figure = _plot_curves(list(csv.DictReader(f)), loss_references(m, _lm_codebook_size(run)),
                              run.report_files / figure_file("lm_loss"))
    if figure:
        lines.append(f"\n![LM loss]({figure.relative_to(run.root)})")
    return "\n".join(lines) + "\n"


def _lm_codebook_size(run: RunDir) -> int | None:
    config = run.lm / CONFIG
    return (read_json(config).get("tokenlm") or {}).get("codebook_size") if config.is_file() else None


def _probe_count_note(run: RunDir) -> str:
    """What the probe tables count for an LM row, when a probe has run: tokenizer + LM."""
    for results in sorted(run.probe.glob(f"*/{RESULTS}")):
        counts = [r.get("encoder_params") for r in read_json(results)["rows"]
                  if r.get("name", "").startswith("lm_") and r.get("encoder_params")]
        if counts:
            return (f"; the probe tables' LM rows count the tokenizer's encoder and codebook too: "
                    f"{counts[0] / 1e6:.2f} M")
    return ""


def loss_references(metrics: dict, codebook_size: int | None) -> dict:
    """What the LM loss plot draws besides the curves: the kept step (a vertical line) and, in
    nats per code, chance (uniform over K) and the unigram and bigram count models."""
    lines = {"chance (uniform over K)": math.log(codebook_size) if codebook_size else None,
             "unigram": math.log(metrics["unigram_ppl"]) if metrics.get("unigram_ppl") else None,
             "bigram": math.log(metrics["bigram_ppl"]) if metrics.get("bigram_ppl") else None}
    return {"kept_step": metrics.get("best_step"),
            "horizontal": {name: value for name, value in lines.items() if value is not None}}


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
             f"{synthesis.get('seconds_per_clip', '?')} s each; {generation_speed(synthesis)}.\n",
             f"Val loss {m.get('val_bits_per_sample') or float('nan'):.3f} bits per sample. Each decoder against "
             f"the input:\n", *decoder_table(m)]
    names = {"stoi": "STOI", "griffinlim": "The Griffin-Lim reference"}
    lines += [f"\n{names.get(name, name)} left out: {why}." for name, why in m.get("skipped", {}).items()]
    if m.get("note"):  # the recipe's word on what this vocoder is (e.g. a CPU pipeline check)
        lines.insert(2, f"> **Recipe note:** {m['note']}\n")
    listening = listening_section(run)
    if listening:
        lines.append("\n" + listening)
    return "\n".join(lines) + "\n"


def generation_speed(synthesis: dict) -> str:
    """How fast the WaveNet generated, saying what the figure is: wall seconds per second of
    audio made, the batch it was made in, and whether the time includes warm-up (the fused
    step's first-call compile)."""
    seconds, clips = synthesis.get("generation_seconds"), synthesis.get("clips")
    per_clip = synthesis.get("seconds_per_clip")
    if not (seconds and clips and per_clip):
        return "generation speed not recorded"
    batch = synthesis.get("batch_size", clips)
    warm = ("after a warm-up call (excluded: it compiles the fused step on first use)"
            if synthesis.get("timed_after_warmup") else "including warm-up (the fused step's first-call compile)")
    return (f"generation ran at {seconds / (clips * per_clip):.2f} s per second of audio made "
            f"({clips} clips generated together in batches of {batch} on {synthesis.get('device', '?')}, "
            f"{seconds:.1f} s in all, {warm})")


def sweep_section(run: RunDir) -> str | None:
    text = _include_with_figures(run.sweep, "## Codebook-size sweep\n" + _sweep_models_note(run))
    if text is None or not (run.sweep / SWEEP_JSON).is_file():
        return text
    from tokenlm.pipeline.sweep import draw_figures  # the sweep's figures, redrawn in the report's grid layout

    for name in draw_figures(read_json(run.sweep / SWEEP_JSON)["rows"], run.report_files, prefix="sweep_"):
        redrawn = (run.report_files / figure_file(f"sweep_{name}")).relative_to(run.root).as_posix()
        text = text.replace(f"]({run.sweep.name}/{figure_file(name)})", f"]({redrawn})")
    return text


def _sweep_models_note(run: RunDir) -> str:
    """Why the sweep's LM and probe figures differ from the sections above: other models."""
    steps = {k: read_json(run.sweep_k(k).lm / METRICS)["steps"] for k in run.codebooks()
             if (run.sweep_k(k).lm / METRICS).is_file()}
    if not steps:
        return ""
    counts = sorted(set(steps.values()))
    main = read_json(run.lm / METRICS)["steps"] if (run.lm / METRICS).is_file() else None
    return (f"\nThe sweep trains its own code LM per K (sweep LMs: {'/'.join(map(str, counts))} steps each, in "
            f"sweep_k/k{{K}}/lm) and probes those: its LM perplexities and probe accuracies are of those models, "
            f"not of the run's main LM" + (f" ({main} steps, above)" if main else "") + ".\n")


def scale_section(run: RunDir) -> str | None:
    return _include_with_figures(run.scale, "## Data scaling\n")


def _include_with_figures(folder: Path, heading: str) -> str | None:
    """A stage's report.md, its figures (beside it) linked relative to RUN; its headings one level down."""
    text = _include(folder / REPORT, heading)
    if text is None:
        return None
    relative = folder.name
    text = text.replace("\n## ", "\n### ")
    return text.replace("](", f"]({relative}/").replace(f"]({relative}/http", "](http")


def rawlm_section(run: RunDir) -> str | None:
    """RUN/rawlm/report.md (tokenlm rawlm), its sample links made relative to RUN."""
    text = _include(run.rawlm / REPORT, "## Raw-audio next-sample prediction\n")
    if text is None:
        return None
    samples = sorted((run.rawlm / SAMPLES).glob("*.wav"))
    players = " · ".join(f"[{p.name}]({p.relative_to(run.root).as_posix()})" for p in samples)
    return text.replace("`samples/`", "`rawlm/samples/`") + (f"\nListen: {players}\n" if players else "")


def _include(path: Path, heading: str) -> str | None:
    if not path.is_file():
        return None
    body = path.read_text().strip().splitlines()
    if body and body[0].startswith("# "):
        body = body[1:]  # the sub-report's own title
    return heading + "\n".join(body) + "\n"


def _plot_curves(rows: list[dict], references: dict, path: Path) -> Path | None:
    """Train and val loss against step, with ``loss_references``' lines, as a PNG."""
    steps = [int(r["step"]) for r in rows if r.get("loss") not in (None, "")]
    if len(steps) < 2:
        return None
    plt = pyplot()  # matplotlib (tokenlm[report]) on Agg

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [float(r["loss"]) for r in rows if r.get("loss") not in (None, "")], label="train")
    evals = [r for r in rows if r.get("val_loss") not in (None, "")]
    if evals:
        ax.plot([int(r["step"]) for r in evals], [float(r["val_loss"]) for r in evals], "o-", label="val")
    styles = {"chance (uniform over K)": ("lightgrey", ":"), "unigram": ("grey", "--"), "bigram": ("black", "-.")}
    for name, value in references["horizontal"].items():
        colour, style = styles.get(name, ("grey", ":"))
        ax.axhline(value, color=colour, ls=style, label=name)
    if references.get("kept_step") is not None:
        ax.axvline(references["kept_step"], color="green", ls="--", label=f"kept step {references['kept_step']}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/code)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
