"""Optional dependencies (pyproject.toml's extras): a one-line error naming the extra to install.

    plt = pyplot()                                   # matplotlib, headless (tokenlm[report])
    require("pretty_midi", "demo", "the demo's GM rendering")
"""

from __future__ import annotations

import importlib

from tokenlm.core.errors import ConfigError


def require(module: str, extra: str, what: str) -> None:
    """Fail in one line, before any work, when ``module`` of ``extra`` is not installed."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs {module}: pip install 'tokenlm[{extra}]'") from None


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), or the one-line error."""
    require("matplotlib", "report", "plotting")
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
