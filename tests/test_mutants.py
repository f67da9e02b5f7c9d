"""scripts/mutants.py stays runnable: every planted mistake still matches the code it changes,
and the machinery reports a planted mistake as caught (the cheapest one, run for real)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutants.py"


@pytest.fixture(scope="module")
def mutants():
    spec = importlib.util.spec_from_file_location("mutants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_mutant_still_matches_the_code(mutants):
    for mutant in mutants.MUTANTS:
        assert not mutants.stale(mutant), mutant.name
        for test in mutant.tests:
            file, name = test.split("::")
            assert f"def {name}(" in (mutants.ROOT / file).read_text(), test


def test_a_planted_mistake_is_caught_and_the_tree_is_untouched(mutants, tmp_path):
    nats = next(m for m in mutants.MUTANTS if "nats" in m.name)
    before = (mutants.ROOT / nats.changes[0][0]).read_text()
    assert mutants.caught(nats, tmp_path / "planted")
    assert (mutants.ROOT / nats.changes[0][0]).read_text() == before
    # the same tests on an unchanged copy pass: "caught" means the mistake, not the copy
    unchanged = mutants.Mutant("unchanged", (), nats.tests)
    assert not mutants.caught(unchanged, tmp_path / "unchanged")
