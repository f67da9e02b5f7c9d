"""What a training run shows and records: train_log.csv, the progress bar, and Ctrl-C."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

from tokenlm.training.distributed import DistContext, all_reduce_sum


class CsvLog:
    """train_log.csv, append-only; on resume, rows after the checkpoint's step are dropped
    (they will be logged again, identically). A metric first seen after the header was
    written (an evaluation's) widens the header; earlier rows leave it empty."""

    def __init__(self, path: Path, items_name: str, metric_names=()):
        self.path = path
        self.columns = ["step", "lr", "loss", "val_loss", *metric_names, f"{items_name}_per_s", "elapsed_s"]
        self._file = None

    def open(self, resume_step: int) -> float:
        """Start (or trim and reopen) the log; returns the elapsed seconds of the last kept row."""
        rows = []
        if resume_step and self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= resume_step]
                self._add_columns(reader.fieldnames or [])
        self._rewrite(rows)
        try:
            return float(rows[-1]["elapsed_s"]) if rows else 0.0
        except (KeyError, ValueError):
            return 0.0

    def write(self, row: dict) -> None:
        if any(name not in self.columns for name in row):
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self._add_columns(row)
            self._rewrite(rows)
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None

    def _add_columns(self, names) -> None:
        # New metrics go before the throughput and time columns, which stay last.
        for name in names:
            if name not in self.columns:
                self.columns.insert(len(self.columns) - 2, name)

    def _rewrite(self, rows: list[dict]) -> None:
        self.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class Window:
    """Training loss, items and step time since the last log row."""

    def __init__(self):
        self.loss, self.steps, self.items, self.time = 0.0, 0, 0.0, 0.0

    def add(self, loss: float, items: float, seconds: float) -> None:
        self.loss += loss
        self.steps += 1
        self.items += items
        self.time += seconds


def log_row(window: Window, step: int, record: dict, dist: DistContext, started: float, items_name: str,
            metric_names) -> dict:
    """One row of the log: the window's mean loss and throughput over all ranks, and the
    step's validation metrics ("" where this step had no evaluation)."""
    loss_sum, steps, items, seconds = all_reduce_sum(
        [window.loss, float(window.steps), window.items, window.time], dist)
    # Items add up over ranks; time is the same wall clock on every rank, so average it.
    seconds /= dist.world_size
    row = {"step": step, "lr": record["lr"], "loss": loss_sum / max(steps, 1)}
    row["val_loss"] = record.get("val_loss", "")
    for name in metric_names:
        row[name] = record.get(name, "")
    row[f"{items_name}_per_s"] = items / seconds if seconds > 0 else ""
    row["elapsed_s"] = round(time.time() - started, 3)
    return row


def postfix(row: dict, items_name: str, monitor: str) -> dict:
    """The progress bar's live figures."""
    out = {"loss": f"{row['loss']:.3f}"}
    if row.get("val_loss") != "":
        out["val"] = f"{row['val_loss']:.3f}"
    if monitor != "val_loss" and row.get(monitor, "") != "":
        out[monitor] = f"{row[monitor]:.3f}"
    rate = row.get(f"{items_name}_per_s")
    if rate != "":
        out[f"{items_name}/s"] = f"{rate:.0f}"
    return out


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tokenlm.core.progress import progress_bar as bar

    return bar(total=total, initial=initial, desc=desc, unit="step", enabled=enabled)


class GracefulInterrupt:
    """First Ctrl-C: finish the current step, checkpoint, then raise KeyboardInterrupt.
    A second Ctrl-C interrupts at once (the last periodic checkpoint still resumes).
    Only for a single process in the main thread: under torchrun every rank would have to
    stop at the same step, and the periodic checkpoints already cover that case."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False
