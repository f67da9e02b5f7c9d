"""The data-scaling study's outputs (tokenlm.pipeline.scale runs the study): scale.csv,
scale.json with a verdict per task, scale.png (probe accuracy against pretraining hours, one
panel per task, 95% intervals as error bars, the hour-independent rows as lines) and
report.md, with the levers' table when there are levers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from tokenlm.core.extras import pyplot
from tokenlm.core.fileio import write_text
from tokenlm.reporting.figures import panel_grid
from tokenlm.run.rundir import REPORT, SCALE_JSON, SCALE_TABLE, figure_file

CURVES = {"lm_best": "code LM (best layer)", "simclr": "SimCLR", "autoencoder": "autoencoder bottleneck",
          "bag_of_codes": "bag of codes"}  # drawn against hours
LINES = ("logmel_stats", "vgg", "timbre")  # independent of the pretraining hours


def write_scale_outputs(out: Path, points: list[dict], rows: list[dict], lines: dict, tasks: list[str],
                        levers: list[dict] = ()) -> None:
    """scale.csv, scale.json, scale.png and report.md (levers: further LMs at the largest size)."""
    for task in tasks:  # the log-mel floor is the same at every size: a line, not a curve
        floor = [r for r in rows if r["task"] == task and r["representation"] == "logmel_stats"]
        if floor:
            lines[task]["logmel_stats"] = {k: floor[-1][k] for k in ("accuracy", "ci_lo", "ci_hi", "title")}
    curves = [r for r in rows if r["representation"] in CURVES]
    columns = ["hours", "train_hours", "task", "representation", "accuracy", "ci_lo", "ci_hi", "pooling", "title"]
    with open(out / SCALE_TABLE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(curves)
    verdicts = {task: verdict(curves, lines[task], task) for task in tasks}
    write_text(out / SCALE_JSON, _json({"points": points, "rows": curves, "lines": lines, "verdicts": verdicts,
                                        "levers": list(levers)}))
    figure = plot_scale(curves, lines, tasks, out / figure_file("scale"))
    text = render_scale_report(points, curves, lines, tasks, verdicts, figure)
    (out / REPORT).write_text(text + render_levers(levers, curves, points[-1]["hours"], tasks) if levers else text)


def _json(value) -> str:
    return json.dumps(value, indent=2) + "\n"


def verdict(curves: list[dict], lines: dict, task: str) -> dict:
    """The issue's questions, answered from the figures: does the LM probe rise with hours,
    how far above the log-mel floor and against SimCLR is it at the largest size."""
    lm = sorted((r for r in curves if r["task"] == task and r["representation"] == "lm_best"),
                key=lambda r: r["hours"])
    simclr = {r["hours"]: r["accuracy"] for r in curves if r["task"] == task and r["representation"] == "simclr"}
    if not lm:
        return {}
    last = lm[-1]
    floor = (lines.get("logmel_stats") or {}).get("accuracy")
    rises = all(b["accuracy"] >= a["accuracy"] for a, b in zip(lm, lm[1:]))  # never falls
    return {"lm_first": lm[0]["accuracy"], "lm_last": last["accuracy"], "never_falls": rises,
            "gain_first_to_last": last["accuracy"] - lm[0]["accuracy"],
            "above_floor_at_largest": None if floor is None else last["accuracy"] - floor,
            "minus_simclr_at_largest": (last["accuracy"] - simclr[last["hours"]]) if last["hours"] in simclr else None}


def plot_scale(curves: list[dict], lines: dict, tasks: list[str], path: Path) -> str | None:
    """Probe accuracy against pretraining hours, one panel per task: the curves with their
    95% intervals as error bars, the hour-independent rows as horizontal lines (their intervals
    shaded)."""
    if not curves:
        return None
    plt = pyplot()  # matplotlib (tokenlm[report]) on Agg

    fig, axes = panel_grid(plt, len(tasks), 4.2, 3.8)
    for ax, task in zip(axes, tasks):
        for name in CURVES:
            points = sorted((r for r in curves if r["task"] == task and r["representation"] == name),
                            key=lambda r: r["train_hours"])
            if not points:
                continue
            x = [r["train_hours"] for r in points]
            y = np.array([r["accuracy"] for r in points], dtype=float)
            low = np.array([r["ci_lo"] if r["ci_lo"] is not None else np.nan for r in points], dtype=float)
            high = np.array([r["ci_hi"] if r["ci_hi"] is not None else np.nan for r in points], dtype=float)
            ax.errorbar(x, y, yerr=np.nan_to_num(np.stack([y - low, high - y])), fmt="o-", capsize=3,
                        label=CURVES[name])
        styles = {"logmel_stats": ("grey", "--"), "vgg": ("black", "-."), "timbre": ("brown", ":"),
                  "chance": ("lightgrey", ":")}
        for name, (colour, style) in styles.items():
            line = lines[task].get(name)
            if line and line.get("accuracy") is not None:
                ax.axhline(line["accuracy"], color=colour, ls=style, label=_line_label(name, line))
                if line.get("ci_lo") is not None and line.get("ci_hi") is not None:  # its 95% interval
                    ax.axhspan(line["ci_lo"], line["ci_hi"], color=colour, alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("pretraining audio (hours, train split)")
        ax.set_ylabel("test accuracy")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _line_label(name: str, line: dict) -> str:
    return {"logmel_stats": "log-mel floor", "chance": "chance"}.get(name, line.get("title", name).split(" (")[0])


def render_scale_report(points: list[dict], curves: list[dict], lines: dict, tasks: list[str], verdicts: dict,
                        figure: str | None) -> str:
    hours = [p["hours"] for p in points]
    text = ["# Data scaling: probe accuracy against pretraining hours\n",
            "The autoencoder, codebook, code LM and SimCLR of each column were trained on that many hours of "
            "the pretraining corpus (nested subsets, one seeded order); the log-mel floor and the supervised "
            "CNNs do not depend on it. Test accuracy with its 95% interval.\n",
            "| pretraining | " + " | ".join(f"{h:g} h" for h in hours) + " |", "|---|" + "---:|" * len(hours),
            "| train hours | " + " | ".join(f"{p['train_hours']:.3g}" for p in points) + " |",
            "| clips | " + " | ".join(str(p["clips"]) for p in points) + " |",
            "| LM val perplexity (bigram) | " + " | ".join(
                _ppl(p["lm_val_perplexity"]) + f" ({_ppl(p['lm_bigram_perplexity'])})" for p in points) + " |",
            "| LM steps run (budget) | " + " | ".join(
                f"{p.get('lm_steps', '?')} ({p.get('lm_steps_budget', '?')})" for p in points) + " |",
            *([f"LM budget: {points[0]['lm_passes']:g} passes over each size's train codes "
               f"({points[0]['lm_batch_codes']} codes a step), early-stopped on val.\n"]
              if points and points[0].get("lm_passes") else []), ""]
    for task in tasks:
        text += [f"## {task}\n", "| representation | " + " | ".join(f"{h:g} h" for h in hours) + " |",
                 "|---|" + "---:|" * len(hours)]
        for name in CURVES:
            by_hours = {r["hours"]: r for r in curves if r["task"] == task and r["representation"] == name}
            if by_hours:
                text.append(f"| {CURVES[name]} | " + " | ".join(_acc(by_hours.get(h)) for h in hours) + " |")
        for name, line in lines[task].items():
            text.append(f"| {_line_label(name, line)} (any hours) | " + " | ".join(_acc(line) for _ in hours) + " |")
        v = verdicts.get(task) or {}
        if v:
            shape = "never falls from one size to the next" if v["never_falls"] else "not monotonic"
            simclr = v["minus_simclr_at_largest"]
            text.append(f"\nLM probe {100 * v['lm_first']:.1f}% -> {100 * v['lm_last']:.1f}% ({shape}); at the "
                        f"largest size {_points(v['above_floor_at_largest'])} against the log-mel floor"
                        + (f" and {_points(simclr)} against SimCLR." if simclr is not None else "."))
        text.append("")
    if figure:
        text.append(f"![scale]({figure})\n")
    return "\n".join(text)


def render_levers(levers: list[dict], curves: list[dict], hours: float, tasks: list[str]) -> str:
    """The levers' table: the reference LM (the lm: section as given) and each lever, trained
    on the same largest size and probed the same way."""
    reference = {r["task"]: r for r in curves if r["hours"] == hours and r["representation"] == "lm_best"}
    names = list(dict.fromkeys(r["lever"] for r in levers))
    by = {(r["lever"], r["task"]): r for r in levers}
    text = [f"## Levers at {hours:g} h\n",
            "The code LM trained again on the largest size's codes with the `lm:` settings changed as each row "
            "says, probed the same way (best layer and pooling chosen on val).\n",
            "| LM | changes | " + " | ".join(tasks) + " |", "|---|---|" + "---:|" * len(tasks),
            "| reference | – | " + " | ".join(_acc(reference.get(t)) for t in tasks) + " |"]
    for name in names:
        changes = next(r["changes"] for r in levers if r["lever"] == name)
        text.append(f"| {name} | {', '.join(f'{k}={v}' for k, v in changes.items())} | "
                    + " | ".join(_acc(by.get((name, t))) for t in tasks) + " |")
    return "\n".join(text) + "\n"


def _acc(row: dict | None) -> str:
    if not row or row.get("accuracy") is None:
        return "–"
    interval = f" [{100 * row['ci_lo']:.1f}, {100 * row['ci_hi']:.1f}]" if row.get("ci_lo") is not None else ""
    return f"{100 * row['accuracy']:.1f}%{interval}"


def _ppl(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _points(value) -> str:
    return "–" if value is None else f"{100 * value:+.1f} points"
