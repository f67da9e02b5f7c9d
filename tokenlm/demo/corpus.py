"""An unlabelled pretraining corpus of any length, rendered offline and deterministically.

Files of 5-30 s (16 kHz mono 16-bit) of four kinds: ``music`` (multi-track songs over all
GM programs, tinysoundfont), ``drums`` (GM drum-kit patterns), ``speech`` (eSpeak NG
sentences by 1-3 voices) and ``mix`` (a song with speech over it); optionally with noise
and room reverberation. Layout::

    DIR/audio/<index>.wav    no per-class folders: the corpus has no labels
    DIR/manifest.csv         path,kind,seconds,effects (no label column)
    DIR/corpus.json          parameters, sources, totals; written last (the build is complete)

File ``i`` draws everything from its own Generator, ``SeedSequence(seed, spawn_key=(i,))``,
and is written to a temporary name then renamed, so a build streams to disk (memory does
not grow with the hours), an interrupted build resumes by skipping finished files, and
two builds are byte-identical whatever the number of worker processes. The files do not
depend on ``hours`` either: asking for more hours adds files to an existing build.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tokenlm.demo.common import SAMPLE_RATE, DemoError
from tokenlm.demo.files import file_sha256, package_version, write_demo_wav

MANIFEST_FILE = "manifest.csv"
INFO_FILE = "corpus.json"
BUILD_FILE = ".corpus-build.json"  # parameters of a build in progress (it may be resumed)
AUDIO_DIR = "audio"
MIN_SECONDS, MAX_SECONDS = 5.0, 30.0
KINDS = ("music", "drums", "speech", "mix")
KIND_WEIGHTS = (0.35, 0.10, 0.35, 0.20)
EFFECT_PROBABILITY = 0.5  # with --noise / --reverb, the share of files that get each
MAX_ATTEMPTS = 5
# Bump when the rendering changes, so that files made by older code are not reused.
FORMAT_VERSION = 1


class FilePlan(NamedTuple):
    """What the manifest says of a file: drawn first, so it is known without rendering it."""

    index: int
    kind: str
    seconds: float
    noise: bool
    reverb: bool

    @property
    def path(self) -> str:
        return f"{AUDIO_DIR}/{self.index:06d}.wav"

    @property
    def effects(self) -> str:
        return "+".join(name for name in ("noise", "reverb") if getattr(self, name))


def file_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def plan_file(rng: np.random.Generator, index: int, noise: bool, reverb: bool) -> FilePlan:
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    seconds = round(float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), 2)
    with_noise = bool(rng.random() < EFFECT_PROBABILITY) and noise
    with_reverb = bool(rng.random() < EFFECT_PROBABILITY) and reverb
    return FilePlan(index, kind, seconds, with_noise, with_reverb)


def plan_corpus(hours: float, seed: int, noise: bool, reverb: bool) -> list[FilePlan]:
    """Files 0, 1, ... until they add up to ``hours`` (the last one may go past it)."""
    plans, total = [], 0.0
    while total < hours * 3600:
        plans.append(plan_file(file_rng(seed, len(plans)), len(plans), noise, reverb))
        total += plans[-1].seconds
    return plans


def build_corpus(out_dir: str | Path, *, hours: float, seed: int = 0, noise: bool = False,
                 reverb: bool = False, workers: int | None = None, progress: bool = True,
                 soundfont: str | Path | None = None) -> dict:
    """Render ``hours`` of unlabelled audio into ``out_dir`` (see the module docstring).

    ``workers``: rendering processes (default: the CPUs this process may use); the files do
    not depend on it. Returns the summary written to corpus.json plus ``out_dir``,
    ``cached`` (an up-to-date build was found), ``rendered`` (files rendered by this call)
    and ``build_seconds``. Raises DemoError for bad arguments or a folder it did not write.
    """
    t0 = time.perf_counter()
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours <= 0:
        raise DemoError(f"hours must be a positive number, got {hours!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoError(f"seed must be a non-negative integer, got {seed!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise DemoError(f"workers must be a positive integer, got {workers!r}")
    from tokenlm.demo.instruments import import_tinysoundfont, soundfont_path
    from tokenlm.demo.speech import espeak_paths

    sf_path = soundfont_path(soundfont)
    import_tinysoundfont()
    lib_path, _ = espeak_paths()
    file_params = {  # everything a file's bytes depend on
        "seed": int(seed), "noise": bool(noise), "reverb": bool(reverb), "sample_rate": SAMPLE_RATE,
        "format_version": FORMAT_VERSION,
        "source": {
            "soundfont": sf_path.name, "soundfont_sha256": file_sha256(sf_path),
            "tinysoundfont": package_version("tinysoundfont"), "espeakng_loader": package_version("espeakng-loader"),
            "espeak_library_sha256": file_sha256(lib_path), "numpy": np.__version__, "soxr": package_version("soxr"),
        },
    }
    params = {"hours": float(hours), **file_params}
    out_dir = Path(out_dir)
    cached = _read_json(out_dir / INFO_FILE)
    if cached.get("params") == params and (out_dir / MANIFEST_FILE).is_file():
        return {**cached["summary"], "out_dir": str(out_dir), "cached": True, "rendered": 0,
                "build_seconds": round(time.perf_counter() - t0, 3)}

    _prepare(out_dir, file_params)
    plans = plan_corpus(float(hours), int(seed), bool(noise), bool(reverb))
    _remove_unplanned(out_dir, plans)
    todo = [p for p in plans if not (out_dir / p.path).is_file()]
    _render_all(out_dir, todo, int(seed), sf_path, workers, progress)

    summary = summarise(plans)
    _write_atomic(out_dir / MANIFEST_FILE, _manifest_text(plans))
    info = {"generator": "tokenlm.demo.corpus", "params": params, "summary": summary}
    _write_atomic(out_dir / INFO_FILE, json.dumps(info, indent=2) + "\n")  # last: complete
    (out_dir / BUILD_FILE).unlink(missing_ok=True)
    return {**summary, "out_dir": str(out_dir), "cached": False, "rendered": len(todo),
            "build_seconds": round(time.perf_counter() - t0, 3)}


# ---- the folder ------------------------------------------------------------------------

def is_corpus_build(path: Path) -> bool:
    """Whether ``path`` holds a corpus build, finished or not (so it may be rebuilt)."""
    return (path / INFO_FILE).is_file() or (path / BUILD_FILE).is_file()


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _prepare(out_dir: Path, file_params: dict) -> None:
    """Make ``out_dir`` ready to (re)build into: keep files rendered with the same
    parameters, clear ours made with others, refuse a folder this module did not write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoError(f"{out_dir} exists and is not a folder; choose another output folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_corpus_build(out_dir):
        raise DemoError(f"{out_dir} exists and is not a corpus build; choose another output folder")
    previous = _read_json(out_dir / BUILD_FILE) or {
        k: v for k, v in _read_json(out_dir / INFO_FILE).get("params", {}).items() if k != "hours"}
    if previous != file_params:
        shutil.rmtree(out_dir / AUDIO_DIR, ignore_errors=True)
    (out_dir / INFO_FILE).unlink(missing_ok=True)  # incomplete from here on
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    (out_dir / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / BUILD_FILE, json.dumps(file_params, indent=2) + "\n")
    for stale in (out_dir / AUDIO_DIR).glob(".*.tmp-*"):  # left by a killed build
        stale.unlink(missing_ok=True)


def _remove_unplanned(out_dir: Path, plans: list[FilePlan]) -> None:
    """Delete files of an earlier, longer build that this one does not list."""
    planned = {Path(p.path).name for p in plans}
    for path in (out_dir / AUDIO_DIR).glob("*.wav"):
        if path.name not in planned:
            path.unlink()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _manifest_text(plans: list[FilePlan]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "kind", "seconds", "effects"])
    writer.writerows((p.path, p.kind, f"{p.seconds:.2f}", p.effects) for p in plans)
    return buf.getvalue()


def summarise(plans: list[FilePlan]) -> dict:
    per_kind = {kind: {"files": 0, "seconds": 0.0} for kind in KINDS}
    for p in plans:
        per_kind[p.kind]["files"] += 1
        per_kind[p.kind]["seconds"] = round(per_kind[p.kind]["seconds"] + p.seconds, 2)
    seconds = round(sum(p.seconds for p in plans), 2)
    return {"n_files": len(plans), "seconds": seconds, "hours": round(seconds / 3600, 4),
            "sample_rate": SAMPLE_RATE, "per_kind": per_kind,
            "with_noise": sum(p.noise for p in plans), "with_reverb": sum(p.reverb for p in plans)}


# ---- rendering -------------------------------------------------------------------------

def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _render_all(out_dir: Path, todo: list[FilePlan], seed: int, sf_path: Path,
                workers: int | None, progress: bool) -> None:
    from tokenlm.core.progress import progress_bar

    workers = min(workers or default_workers(), max(len(todo), 1))
    jobs = [(str(out_dir), plan, seed, str(sf_path)) for plan in todo]
    with progress_bar(total=sum(p.seconds for p in todo), desc="corpus", unit="s", enabled=progress) as bar:
        if workers == 1:
            for job in jobs:
                bar.update(_render_job(job))
            return
        # fork where there is one: spawn would re-run an unguarded calling script. The
        # children only run numpy, soxr, tinysoundfont and eSpeak subprocesses, never torch.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for seconds in pool.map(_render_job, jobs):
                bar.update(seconds)


_RENDERERS: dict[str, object] = {}  # one synth per worker process


def _render_job(job: tuple[str, FilePlan, int, str]) -> float:
    """Render one planned file and write it under its final name; returns its seconds."""
    from tokenlm.demo.corpus_audio import render_file
    from tokenlm.demo.music import MusicRenderer

    out_dir, plan, seed, sf_path = job
    if sf_path not in _RENDERERS:
        _RENDERERS[sf_path] = MusicRenderer(Path(sf_path))
    rng = file_rng(seed, plan.index)
    plan_file(rng, plan.index, plan.noise, plan.reverb)  # the same draws as the plan, skipped
    pcm = render_file(rng, plan, _RENDERERS[sf_path])
    final = Path(out_dir) / plan.path
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    write_demo_wav(tmp, pcm)
    os.replace(tmp, final)
    return plan.seconds


__all__ = ["build_corpus", "plan_corpus", "is_corpus_build", "FilePlan", "KINDS"]
