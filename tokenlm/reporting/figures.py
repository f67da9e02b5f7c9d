"""Multi-panel figures laid out to be read on a 1280 px page: at most ``COLUMNS`` panels a
row (a row of six 4.2-inch panels was a 2520 px strip whose labels shrank to nothing when the
page fit it to its width)."""

from __future__ import annotations

import math

COLUMNS = 3  # 3 x 4.2 in at 100 dpi = 1260 px: the page's width, text at its own size


def panel_grid(plt, n: int, width: float, height: float, columns: int = COLUMNS):
    """(figure, the n axes in reading order): a grid of ``columns`` panels a row, each
    ``width`` x ``height`` inches; the grid's unused cells are hidden."""
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]
