"""Experiment trackers beside train_log.csv: TensorBoard, Weights & Biases, MLflow.

``--log-to tensorboard,wandb`` (or the recipe's ``run.log_to``) turns them on for the training
stages run under ``logging_to``; the training loop hands every row it writes to train_log.csv
to each tracker too, so the numbers are the same. Each is an optional extra
(``pip install 'tokenlm[tensorboard]'``), and each writes offline, inside the stage's folder:

    WORK/tensorboard/   event files         tensorboard --logdir RUN
    WORK/wandb/         an offline run      wandb sync RUN/lm/wandb/offline-run-*
    WORK/mlruns/        an MLflow file store  mlflow ui --backend-store-uri RUN/lm/mlruns
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterable

from tokenlm.core.errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow")
_LOG_TO: ContextVar[tuple[str, ...]] = ContextVar("log_to", default=())


def parse_log_to(value) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` or a list of names -> a tuple of known tracker names."""
    if not value:
        return ()
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"unknown tracker {', '.join(map(str, unknown))} (known: {', '.join(TRACKERS)})")
    return tuple(dict.fromkeys(names))


@contextmanager
def logging_to(value):
    """Within this block, training stages also log to the trackers ``value`` names."""
    token = _LOG_TO.set(parse_log_to(value))
    try:
        yield
    finally:
        _LOG_TO.reset(token)


def open_trackers(work_dir: Path, name: str) -> list:
    """The trackers in effect (``logging_to``), each writing under ``work_dir``; a missing
    package is a one-line error naming its extra."""
    return [_OPEN[tracker](Path(work_dir), name) for tracker in _LOG_TO.get()]


def scalars(row: dict) -> dict[str, float]:
    """The numeric, finite columns of a train_log row, step aside."""
    out = {}
    for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def _need(package: str, extra: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"--log-to {extra} needs the {extra} extra: pip install 'tokenlm[{extra}]'") from None


class TensorBoard:
    def __init__(self, work_dir: Path, name: str):
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.name = name
        self.writer = SummaryWriter(log_dir=str(work_dir / "tensorboard"))

    def log(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(f"{self.name}/{key}", value, int(row["step"]))

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, work_dir: Path, name: str):
        wandb = _need("wandb", "wandb")
        self.run = wandb.init(mode="offline", dir=str(work_dir), project="tokenlm", name=name, reinit=True)

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, work_dir: Path, name: str):
        self.mlflow = _need("mlflow", "mlflow")
        store = (work_dir / "mlruns").resolve()
        self.client = self.mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
        experiment = self.client.get_experiment_by_name("tokenlm")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("tokenlm")
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id

    def log(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.client.log_metric(self.run_id, key, value, step=int(row["step"]))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_OPEN = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def close_all(trackers: Iterable) -> None:
    for tracker in trackers:
        tracker.close()
