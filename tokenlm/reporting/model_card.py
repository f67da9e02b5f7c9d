"""The model card (README.md) of a pretrained folder: what the models were trained on, with
which recipe, what they scored and with which library versions, read off the run's own records.

``card_facts(run, ...)`` gathers them as plain data (so a test can check the card against the
run); ``render_card(facts, model)`` writes the Markdown, with the YAML header the Hugging Face
Hub reads.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tokenlm.core.fileio import read_json
from tokenlm.run.artifacts import STAGE_FILE
from tokenlm.run.rundir import METRICS, RunDir, codebook_dir, read_run_manifest


def card_facts(run: RunDir, tokenizer, lm, vocoder) -> dict:
    """Everything the card says, from the run's files (absent ones are left out)."""
    recipe = run.saved_recipe
    return {
        "run": run.root.name,
        "data": _data_summary(run),
        "recipe_text": recipe.read_text() if recipe.is_file() else None,
        "tokenizer_metrics": _numbers(codebook_dir(run.tokenizer, tokenizer.codebook_size) / METRICS),
        "lm_metrics": _numbers(run.lm / METRICS) if lm is not None else {},
        "vocoder_metrics": _numbers(run.vocoder / METRICS) if vocoder is not None else {},
        "probe_summary": probe_tables(run),
        "versions": _versions(run),
    }


def probe_tables(run: RunDir) -> str | None:
    """RUN/probe/summary.md (representations x tasks), else each task's own table (a run of one task)."""
    summary = run.probe / "summary.md"
    if summary.is_file():
        return summary.read_text().strip()
    reports = sorted(run.probe.glob("*/report.md"))
    return "\n\n".join(report.read_text().strip() for report in reports) or None


def _data_summary(run: RunDir) -> dict:
    """Clips and hours per split of the audio the self-supervised models trained on, its source."""
    try:
        rows = read_run_manifest(run)
    except Exception:  # a run without a readable manifest: the card says nothing about it
        return {}
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    hours = Counter()
    for row in ok:
        hours[row.get("split")] += float(row.get("duration") or 0.0) / 3600
    sources = sorted({Path(r["path"]).parent.parent.name for r in ok if r.get("path")})[:3]  # names, not paths
    return {"clips": Counter(r.get("split") for r in ok), "hours": dict(hours),
            "skipped": len(rows) - len(ok), "sources": sources, "tasks": run.task_names()}


def _numbers(path: Path) -> dict:
    """The numeric top-level entries of a metrics.json (nested sections left to the file)."""
    if not path.is_file():
        return {}
    return {k: v for k, v in read_json(path).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _versions(run: RunDir) -> dict:
    """The library versions the LM (else the tokenizer) was built with, from its stage.json."""
    for folder in (run.lm, run.tokenizer):
        if (folder / STAGE_FILE).is_file():
            return dict(read_json(folder / STAGE_FILE).get("versions") or {})
    return {}


def render_card(facts: dict, model) -> str:
    """The README.md of a pretrained folder."""
    k = model.codebook_size
    parts = ["tokenizer"] + [name for name, part in (("code LM", model.lm), ("vocoder", model.vocoder)) if part]
    lines = ["---", "library_name: tokenlm", "tags: [audio, audio-tokenizer, discrete-units, tokenlm]", "---", "",
             f"# tokenlm: {facts.get('run') or 'pretrained'} (K={k})", "",
             f"A {', '.join(parts)} exported from a tokenlm run with `tokenlm publish`. Audio at "
             f"{model.tokenizer.sample_rate} Hz becomes {model.tokenizer.code_rate:g} codes per second in [0, {k}).", "",
             "```python",
             "from tokenlm.pipeline.pretrained import PretrainedModel",
             "model = PretrainedModel.from_pretrained(\"THIS_FOLDER\")   # or a Hub id",
             "codes = model.tokenizer.encode(wav, sample_rate)            # (T,), (C, T) or (T, C)",
             "```", "",
             "Units of a folder of audio: `tokenlm tokenize OUT --tokenizer THIS_FOLDER --data DIR` then "
             "`tokenlm export OUT --format units`.", ""]
    lines += _data_lines(facts.get("data") or {})
    lines += ["## Recipe", ""]
    lines += (["The run's recipe as run (also `recipe.yaml` here):", "", "```yaml", facts["recipe_text"].strip(), "```", ""]
              if facts.get("recipe_text") else ["The run was not made by `tokenlm run`: no recipe was saved.", ""])
    lines += ["## Scores", ""]
    lines += _metric_lines("Tokenizer (codebook)", facts.get("tokenizer_metrics"))
    lines += _metric_lines("Code LM (val)", facts.get("lm_metrics"))
    lines += _metric_lines("Vocoder (decoder metrics)", facts.get("vocoder_metrics"))
    if facts.get("probe_summary"):
        lines += ["### Linear probes (test accuracy, 95% interval)", "", facts["probe_summary"], ""]
    else:
        lines += ["No probe results in the run.", ""]
    versions = facts.get("versions") or {}
    if versions:
        lines += ["## Versions", "", "The libraries the run was trained with:", "",
                  ", ".join(f"{name} {value}" for name, value in versions.items() if value), ""]
    lines += ["## Limits", "",
              "Trained on the data above only: codes of very different audio (another sample rate is "
              "resampled; another domain is not) carry less; check the probe scores on your own task "
              "with `tokenlm probe RUN --task DIR` before relying on them.", ""]
    return "\n".join(lines)


def _data_lines(data: dict) -> list[str]:
    if not data:
        return ["## Training data", "", "Not recorded.", ""]
    clips, hours = data["clips"], data["hours"]
    per_split = ", ".join(f"{split}: {clips[split]} clips, {_duration(hours.get(split, 0))}"
                          for split in sorted(clips, key=str))
    lines = ["## Training data", "", f"Self-supervised training data (the tokenizer, LM and vocoder train on "
             f"its train split): {per_split}; {data['skipped']} clips skipped as unusable."]
    if data.get("sources"):
        lines += [f"From: {', '.join(data['sources'])}."]
    if data.get("tasks"):
        lines += [f"Labelled tasks it was judged on (never trained on): {', '.join(data['tasks'])}."]
    return lines + [""]


def _duration(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def _metric_lines(title: str, metrics: dict | None) -> list[str]:
    if not metrics:
        return []
    cells = ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in metrics.items())
    return [f"**{title}:** {cells}", ""]
