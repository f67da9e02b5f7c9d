"""The probe's report.md: its results.json as one comparison table, and how to read it."""

from __future__ import annotations

from tokenlm.evaluation.rows import LINEAR, SUPERVISED


def render_report(results: dict) -> str:
    """report.md: the comparison table, then the skipped rows and how to read the table."""
    dataset = results["dataset"]
    with_folds = any(r.get("folds") for r in results["rows"] if r.get("status") == "ok")
    clips = dataset["clips"]
    task = f", task `{results['task']}`" if results.get("task") else ""
    lines = [
        "# Linear probes and baselines",
        "",
        f"Run `{results['run']}`{task}: {clips['train']} train / {clips['val']} val / {clips['test']} test clips, "
        f"{len(dataset['classes'])} classes."
        + (f" Majority class on test: {pct(dataset['majority_class_test_accuracy'])}."
           if dataset.get("majority_class_test_accuracy") is not None else ""),
        "",
    ]
    if with_folds:
        n = len(dataset["folds"])
        lines += [f"Accuracy and macro-F1: mean ± std over {n} official folds (each fold is test once, the "
                  "fold before it picks the hyper-parameters), [95% t-interval of the mean]. The test-split "
                  "column is the run's own split.", ""]
    else:
        lines += ["Accuracy and macro-F1 on the test split, [95% interval: bootstrap over test clips]. "
                  "Intervals that do not overlap mark a clear difference.", ""]
    header = ["representation", "how", "accuracy", "macro-F1", "dim", "encoder params", "MFLOPs / s audio",
              "encoder training (s)", "probe fit (s)"]
    if with_folds:
        header.append("test-split acc.")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        if row.get("status") != "ok":
            continue
        lines.append("| " + " | ".join(_table_cells(row, with_folds)) + " |")
    skipped = [r for r in results["rows"] if r.get("status") != "ok"]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {r['title']}: {r['reason']}" for r in skipped]
    lines += [
        "",
        f"*{LINEAR}*: the same standardised multinomial logistic regression on frozen features for every "
        "row (C chosen on val). Sequences (autoencoder bottleneck, quantised bottleneck, LM states) are pooled over time as "
        "the title says: mean, mean+std or mean+max, chosen on val unless the probe's `pooling` fixes it. "
        f"*{SUPERVISED}*: the network's own classifier, trained with labels (not a probe).",
        "Log-mel statistics are the floor a learned representation must beat. " + _pretraining_note(results),
        "FLOPs: 2 per multiply-add of the convolutions and matrix products (linear layers, attention), for one "
        "second of audio.",
        "Training time: the encoder's own stages (for codes and the LM: autoencoder + codebook + LM).",
    ]
    if with_folds:
        lines.append("In the fold cross-validation, encoders trained without labels on the run's train split "
                     "have heard the audio (never the labels) of the folds in that split.")
    lines.append("")
    return "\n".join(lines)


def _pretraining_note(results: dict) -> str:
    """What the self-supervised encoders heard: this dataset's train split, or another corpus."""
    corpus = results.get("pretraining_data")
    if results.get("pretrained_apart") and corpus:
        return (f"Self-supervised encoders (tokenizer, LM, SimCLR) were trained on the pretraining corpus "
                f"`{corpus}` only: never this task's audio or labels.")
    return "Self-supervised encoders (tokenizer, LM, SimCLR) saw only the train split's audio, without labels."


def pct(value, sign: bool = True) -> str:
    """An accuracy as a percentage with one decimal, or "–" when there is none."""
    return "–" if value is None else f"{100 * value:.1f}" + ("%" if sign else "")


def with_interval(text: str, interval) -> str:
    """``text`` followed by a [lo, hi] interval in percent, e.g. "62.5% [57.1, 67.9]"; a row
    recorded before intervals existed shows ``text`` alone."""
    if not interval:
        return text
    return f"{text} [{pct(interval[0], sign=False)}, {pct(interval[1], sign=False)}]"


def _table_cells(row: dict, with_folds: bool) -> list[str]:
    test = row.get("test") or {}
    folds = row.get("folds")
    if with_folds and folds:
        accuracy = with_interval(f"{pct(folds['accuracy_mean'])} ± {pct(folds['accuracy_std'], sign=False)}",
                                 folds.get("accuracy_ci"))
        macro_f1 = with_interval(f"{pct(folds['macro_f1_mean'])} ± {pct(folds['macro_f1_std'], sign=False)}",
                                 folds.get("macro_f1_ci"))
    else:
        accuracy = with_interval(pct(test.get("accuracy")), test.get("accuracy_ci"))
        macro_f1 = with_interval(pct(test.get("macro_f1")), test.get("macro_f1_ci"))
    flops = row.get("flops_per_second")
    cells = [
        row["title"], row["kind"], accuracy, macro_f1, str(row.get("dim", "–")),
        _count(row.get("encoder_params")), "–" if flops is None else f"{flops / 1e6:,.1f}",
        _seconds(row.get("encoder_train_s")), _seconds(row.get("probe_fit_s")),
    ]
    if with_folds:
        cells.append(with_interval(pct(test.get("accuracy")), test.get("accuracy_ci")))
    return cells


def _count(value) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value:,}"


def _seconds(value) -> str:
    return "–" if value is None else f"{value:,.1f}"
