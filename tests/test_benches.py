"""Every benchmark script still imports against the package as it is: a moved or renamed
function breaks this test, not a user's `make bench` (scripts/bench_hours.py's smoke run is
tests/test_bench_hours.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_the_bench_imports(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])  # a bench that reads argv at import only prints help
    spec = importlib.util.spec_from_file_location(f"bench_under_test_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # its imports resolve; `if __name__ == "__main__"` keeps it from running
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
