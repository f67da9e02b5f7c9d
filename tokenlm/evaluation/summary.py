"""RUN/probe/summary.{json,md}: one run's models across its tasks, as the HEAR benchmark
reports one model across tasks: a matrix of representations x tasks, each cell the headline
test accuracy with its 95% interval, read from each task's probe results."""

from __future__ import annotations

import json
from pathlib import Path

from tokenlm.core.fileio import read_json, write_text
from tokenlm.evaluation.probe_table import pct
from tokenlm.evaluation.rows import headline
from tokenlm.run.rundir import RESULTS, SUMMARY


def summary_path(probe_dir: Path, suffix: str = ".md") -> Path:
    return Path(probe_dir) / f"{SUMMARY}{suffix}"


def summary_tasks(probe_dir: Path) -> list[str]:
    """The tasks the summary in ``probe_dir`` lists, in order (none without a summary)."""
    path = summary_path(probe_dir, ".json")
    return list(read_json(path)["tasks"]) if path.is_file() else []


def write_summary(probe_dir: Path, tasks: list[str]) -> Path:
    """Write summary.json and summary.md in ``probe_dir`` from the results of ``tasks`` (each
    once, in order; those not probed yet are left out); return the markdown's path."""
    probe_dir = Path(probe_dir)
    tasks = list(dict.fromkeys(tasks))
    results = {t: read_json(probe_dir / t / RESULTS) for t in tasks if (probe_dir / t / RESULTS).is_file()}
    names, titles = [], {}
    for result in results.values():
        for row in result["rows"]:
            if row.get("status") == "ok" and row["name"] not in titles:
                names.append(row["name"])
                titles[row["name"]] = _task_free_title(row)
    matrix = {task: {row["name"]: cell(row) for row in result["rows"] if row.get("status") == "ok"}
              for task, result in results.items()}
    chance = {task: _chance(result) for task, result in results.items()}
    record = {"tasks": list(results), "representations": names, "titles": titles, "chance": chance,
              "accuracy": matrix}
    probe_dir.mkdir(parents=True, exist_ok=True)
    write_text(summary_path(probe_dir, ".json"), json.dumps(record, indent=2) + "\n")
    path = summary_path(probe_dir)
    write_text(path, render_summary(list(results), names, titles, matrix, chance))
    return path


def _task_free_title(row: dict) -> str:
    """A row's title without what each task chose for itself (the LM layer, the pooling)."""
    if row["name"] == "lm_best":
        return "LM best layer (layer, pooling and reading chosen on val per task)"
    return row.get("title", row["name"]).removesuffix(f", {row['pooling']}" if row.get("pooling") else "")


def cell(row: dict) -> dict:
    """A row's headline accuracy and its 95% interval (folds: over folds; else bootstrap
    over test clips), when the row records one."""
    folds, test = row.get("folds") or {}, row.get("test") or {}
    interval = folds.get("accuracy_ci") if folds else test.get("accuracy_ci")
    return {"accuracy": headline(row), "ci": interval, "kind": row.get("kind")}


def _chance(result: dict) -> float | None:
    classes = result.get("dataset", {}).get("classes") or []
    return 1 / len(classes) if classes else None


def render_summary(tasks: list[str], names: list[str], titles: dict, matrix: dict, chance: dict) -> str:
    lines = ["# Probe summary: representations x tasks", "",
             "Test accuracy (95% interval) of each representation on each task; every self-supervised "
             "model was trained on the run's pretraining corpus only.", "",
             "| representation | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for name in names:
        cells = [format_cell(matrix[t].get(name)) for t in tasks]
        lines.append(f"| {titles[name]} | " + " | ".join(cells) + " |")
    lines.append("| *chance (1 / classes)* | " + " | ".join(pct(chance[t]) for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def format_cell(value: dict | None) -> str:
    if not value or value.get("accuracy") is None:
        return "–"
    interval = value.get("ci")
    text = pct(value["accuracy"])
    return text + (f" [{pct(interval[0], False)}, {pct(interval[1], False)}]" if interval else "")
