"""Progress bars: every bar of tokenlm comes from ``progress_bar``.

On a terminal it is an ordinary tqdm bar. When stderr is not a terminal (a Slurm log, a pipe,
a CI job) a redrawn bar would fill the log with carriage returns, so the bar prints a plain
line instead, at most every ``PLAIN_INTERVAL_S`` seconds, and one when it closes.
"""

from __future__ import annotations

import sys

PLAIN_INTERVAL_S = 30.0
# Off for the whole command with `--no-progress` (every command has it: stages/options.py).
_SWITCH = {"on": True}
# No bar graphic in a log: the count, the times and the live figures are what a reader wants.
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, **options):
    """A tqdm bar (over ``iterable`` when given); ``options`` go to tqdm (initial, leave, ...)."""
    stream = sys.stderr
    if not enabled or not _SWITCH["on"]:
        options["disable"] = True
    if stream.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, **options)
    from tqdm import tqdm

    options.pop("leave", None)  # a line once printed stays; clearing it would print a blank one
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=PlainLines(stream), mininterval=PLAIN_INTERVAL_S,
                bar_format=PLAIN_FORMAT, ascii=True, **options)


class PlainLines:
    """A file for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line.strip():
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def set_progress(enabled: bool) -> None:
    """Every later bar of this process shown (True) or not (False): ``--no-progress``."""
    _SWITCH["on"] = bool(enabled)
