"""Plant known mistakes in reported numbers and check that the test suite catches each.

    python scripts/mutants.py            # every mutant: caught or MISSED, with the tests run
    python scripts/mutants.py --list     # what each mutant changes

Each mutant is one small text change in a copy of the package (the working tree is never
touched) and the tests that must fail on it. A mutant whose text no longer matches the code
is reported as stale: tests/test_mutants.py checks that none is, so a refactor keeps this
script runnable. Exit status 1 when a mutant is missed or stale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    changes: tuple[tuple[str, str, str], ...]  # (file, text, replacement): each text occurs once
    tests: tuple[str, ...]


MUTANTS = (
    Mutant("rawlm bits/sample in nats",
           (("tokenlm/pipeline/rawlm.py", '"bits_per_sample": nll / count / math.log(2)', '"bits_per_sample": nll / count'),),
           ("tests/test_reported_numbers.py::test_bits_per_sample_are_bits",)),
    Mutant("purity and cluster purity swapped",
           (("tokenlm/tokenizer/codebook.py", '"purity": float(joint.max(axis=1).sum())', '"purity": float(joint.max(axis=0).sum())'),
            ("tokenlm/tokenizer/codebook.py", '"cluster_purity": float(joint.max(axis=0).sum())',
             '"cluster_purity": float(joint.max(axis=1).sum())')),
           ("tests/test_reported_numbers.py::test_purity_and_pnmi_on_a_case_worked_out_by_hand",)),
    Mutant("PNMI halved",
           (("tokenlm/tokenizer/codebook.py", "min(1.0, mutual_info / label_entropy)", "min(1.0, 0.5 * mutual_info / label_entropy)"),),
           ("tests/test_reported_numbers.py::test_purity_and_pnmi_on_a_case_worked_out_by_hand",)),
    Mutant("Griffin-Lim's NNLS inversion replaced by a flat spectrum",
           (("tokenlm/vocoder/griffin_lim.py", "power = librosa.util.nnls(fb.astype(np.float64), mel_power)",
             "power = np.ones((fb.shape[1], mel_power.shape[1]))"),),
           ("tests/test_reported_numbers.py::test_griffin_lim_inverts_a_log_mel_it_was_given",)),
    Mutant("the vocoder row measured on unrelated noise",
           (("tokenlm/evaluation/audio_quality.py", 'decoded = {"vocoder": resynth, "mulaw": mulaw}',
             'decoded = {"vocoder": np.random.default_rng(0).uniform(-1, 1, len(audio)).astype(np.float32), '
             '"mulaw": mulaw}'),),
           ("tests/test_reported_numbers.py::test_decoder_distances_against_known_answers",)),
    Mutant("unit files written and read with commas (only tokenlm's reader agrees)",
           (("tokenlm/pipeline/export.py", "{' '.join(map(str, stream.tolist()))}", "{','.join(map(str, stream.tolist()))}"),
            ("tokenlm/pipeline/export.py", "np.array(units.split(), dtype=np.uint16)",
             'np.array(units.split(","), dtype=np.uint16)')),
           ("tests/test_export.py::test_each_format_reads_back_with_the_consumers_own_tools",)),
)


def stale(mutant: Mutant, root: Path = ROOT) -> list[str]:
    """The changes whose text is not in its file exactly once."""
    return [f"{file}: {text!r}" for file, text, _ in mutant.changes if (root / file).read_text().count(text) != 1]


def planted(mutant: Mutant, work: Path) -> Path:
    """A copy of the package and tests under ``work`` with the mutant's changes made."""
    tree = work / mutant.name.replace(" ", "_").replace("/", "_")
    for folder in ("tokenlm", "tests"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for file, text, replacement in mutant.changes:
        path = tree / file
        path.write_text(path.read_text().replace(text, replacement))
    return tree


def caught(mutant: Mutant, work: Path) -> bool:
    """Whether the mutant's tests fail on the planted copy."""
    tree = planted(mutant, work)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
                            cwd=tree, env=env, capture_output=True, text=True)
    return result.returncode != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = parser.parse_args()
    if args.list:
        for mutant in MUTANTS:
            print(f"{mutant.name}:")
            for file, text, replacement in mutant.changes:
                print(f"  {file}: {text}  ->  {replacement}")
        return 0
    failures = 0
    with tempfile.TemporaryDirectory(prefix="tokenlm-mutants-") as work:
        for mutant in MUTANTS:
            problems = stale(mutant)
            verdict = "STALE (" + "; ".join(problems) + ")" if problems else (
                "caught" if caught(mutant, Path(work)) else "MISSED")
            failures += verdict != "caught"
            print(f"{verdict:8s} {mutant.name}  [{', '.join(t.split('::')[-1] for t in mutant.tests)}]", flush=True)
    print(f"{len(MUTANTS) - failures} of {len(MUTANTS)} mutants caught")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
