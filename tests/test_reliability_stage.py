"""Stage integrity under faults (issue 11, items 1, 4, 11 and the file checks of 6): two
commands on one run, kill -9 at every rename of a finish, folders tokenlm did not make,
fsync before publishing, and finished files that no longer match their stage.json.

Processes that must really run at the same time, or really die, are separate interpreters
running a few lines of the real Stage (importing only tokenlm.run.artifacts: a tenth of a second).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tokenlm.core.errors import ArtifactError
from tokenlm.core.fileio import read_json, write_json
from tokenlm.run import artifacts
from tokenlm.run.artifacts import STAGE_FILE, Stage, keeping_checkpoints
from tokenlm.run.rundir import RunDir

# Spelled here rather than imported, so that this module runs (and fails test by test) on the
# code before the run lock existed.
LOCK_FILE = ".tokenlm.lock"
ROOT = Path(__file__).resolve().parents[1]

# argv: OUT PAYLOAD GATE [CRASH_AT]. Builds OUT with config {"payload": PAYLOAD}, writing
# PAYLOAD into payload.txt; with GATE, says GATE.started once inside the stage and waits for
# GATE.go before finishing; with CRASH_AT=n, kills itself (SIGKILL) at the n-th os.replace.
# With FILE_SIZE_LIMIT in its environment, no file it writes may grow past that many bytes
# (ulimit -f), and a write that would fails as on a full disk.
WORKER = r"""
import os, signal, sys, time
from pathlib import Path
from tokenlm.run import artifacts
from tokenlm.run.artifacts import Stage

if os.environ.get("FILE_SIZE_LIMIT"):
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(os.environ["FILE_SIZE_LIMIT"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
out, payload, gate = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if len(sys.argv) > 4:
    crash_at, calls, real_replace = int(sys.argv[4]), [], os.replace
    def replace(src, dst):
        calls.append(dst)
        if len(calls) == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    artifacts.os.replace = replace

def make(work):
    (work / "payload.txt").write_text(payload * 100)
    if gate != "-":
        Path(gate + ".started").write_text(str(os.getpid()))
        while not Path(gate + ".go").exists():
            time.sleep(0.01)
    return {"payload": payload}

Stage(out, config={"payload": payload}).build("thing", make)
"""


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test():
    """A failing test must not leave a worker waiting at its gate forever: kill what is left."""
    yield
    while SPAWNED:
        process = SPAWNED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


SPAWNED: list = []


def worker(out: Path, payload: str, gate: Path | str = "-", *extra, wait: float = 0.0, **env) -> subprocess.Popen:
    """A process building ``out``; its stderr goes to ``process.log`` (read with ``said``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENLM_LOCK_WAIT": str(wait), **env}
    log = out.parent.parent / f"{payload[:8]}-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, "-c", WORKER, str(out), payload, str(gate), *map(str, extra)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=err)
    process.log = log
    SPAWNED.append(process)
    return process


def said(process: subprocess.Popen) -> str:
    return process.log.read_text()


def ended(process: subprocess.Popen) -> int:
    return process.wait(timeout=60)


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None, said(process)
        assert time.monotonic() < deadline, "the worker never started its stage"
        time.sleep(0.01)


def finished_payload(out: Path) -> str:
    """The payload a finished folder holds, checked against the config its stage.json names."""
    record = read_json(out / STAGE_FILE)
    text = (out / "payload.txt").read_text()
    assert text == record["config"]["payload"] * 100, "the data is not what stage.json says it is"
    assert Stage(out, config=record["config"]).done
    return record["config"]["payload"]


# ---- 1. two commands on one run -------------------------------------------------------------

def test_a_second_command_on_a_busy_run_stops_in_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "run" / "thing"
    first = worker(out, "A", tmp_path / "gate")
    wait_for(tmp_path / "gate.started", first)
    second = worker(out, "B")  # another config, no patience: refused while A builds
    assert ended(second) != 0
    line = said(second).strip().splitlines()[-1]
    assert f"pid {first.pid}" in line and "in use" in line and "TOKENLM_LOCK_WAIT" in line
    (tmp_path / "gate.go").touch()
    assert ended(first) == 0, said(first)
    assert finished_payload(out) == "A"
    # once A is done, B builds, and the run is B's through and through
    again = worker(out, "B")
    assert ended(again) == 0, said(again)
    assert finished_payload(out) == "B"
    assert sorted(os.listdir(out.parent)) == ["thing"]  # no lock file, work or old folder left


def test_a_second_command_with_the_same_config_waits_then_finds_it_up_to_date(tmp_path):
    out = tmp_path / "run" / "thing"
    first = worker(out, "A", tmp_path / "gate")
    wait_for(tmp_path / "gate.started", first)
    second = worker(out, "A", wait=60)
    deadline = time.monotonic() + 60
    while "waiting" not in said(second):  # it says whom it waits for
        assert time.monotonic() < deadline and second.poll() is None, said(second)
        time.sleep(0.01)
    assert f"pid {first.pid}" in said(second)
    (tmp_path / "gate.go").touch()
    assert ended(first) == 0, said(first)
    assert ended(second) == 0, said(second)
    assert "thing up to date" in said(second)  # it did not build the stage a second time
    assert finished_payload(out) == "A"


def test_a_holder_killed_with_sigkill_leaves_no_lock_behind(tmp_path):
    out = tmp_path / "run" / "thing"
    first = worker(out, "A", tmp_path / "gate")
    wait_for(tmp_path / "gate.started", first)
    first.send_signal(signal.SIGKILL)
    ended(first)
    assert (out.parent / LOCK_FILE).exists()  # the file stays, the kernel dropped the lock
    second = worker(out, "B")
    assert ended(second) == 0, said(second)
    assert finished_payload(out) == "B"
    assert sorted(os.listdir(out.parent)) == ["thing"]  # A's work folder (another key) was tokenlm's: cleared


def test_stages_started_inside_a_stage_of_the_same_run_do_not_wait_for_themselves(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENLM_LOCK_WAIT", "0")
    run = RunDir(tmp_path / "run")
    outer = Stage(run.sweep, config={"k": [8]}, lock_root=run.lock_root)
    work = outer.start()
    # the sweep builds codebooks, tokens and per-K LMs of the same run while it holds the lock
    for inner in (run.codebook(8), run.tokens(8), run.sweep_k(8).lm, run.baseline("vgg")):
        Stage(inner, config={}, lock_root=run.sweep_k(8).lock_root).build("inner", lambda w: None)
    (work / "sweep.csv").write_text("k\n8\n")
    outer.finish()
    assert not (run.root / LOCK_FILE).exists()


def test_the_lock_of_every_stage_of_a_run_is_the_runs(tmp_path):
    """A run nested in another (task, sweep K, scale point, lever) is guarded by the outer run's
    lock, however deep; a run opened on its own is its own."""
    run = RunDir(tmp_path / "run")
    for nested in (run.task("keywords"), run.sweep_k(16), run.scale_point(0.5), run.lever("multi"),
                   run.scale_point(2).task("keywords"), run.sweep_k(16).task("pitch")):
        assert nested.lock_root == run.root, nested
    assert RunDir(tmp_path / "elsewhere").lock_root == tmp_path / "elsewhere"
    assert Stage(tmp_path / "out" / "lm", config={}).run_root == tmp_path / "out"  # outside any run: its parent


def test_two_configs_never_share_a_work_folder(tmp_path):
    a, b = Stage(tmp_path / "thing", {"f_min": 0}), Stage(tmp_path / "thing", {"f_min": 50})
    assert a.work_dir != b.work_dir and a.work_dir.parent == tmp_path


# ---- 11. kill -9 at every rename of a finish --------------------------------------------------

@pytest.mark.parametrize("crash_at", [1, 2, 3])  # stage.json into the work folder, old folder out, new in
def test_kill_9_at_any_rename_of_a_finish_never_leaves_wrong_data_and_a_rerun_recovers(tmp_path, crash_at):
    out = tmp_path / "run" / "thing"
    assert ended(worker(out, "A")) == 0
    killed = worker(out, "B", "-", crash_at)
    assert ended(killed) == -signal.SIGKILL
    if (out / STAGE_FILE).is_file():
        assert finished_payload(out) in ("A", "B")  # whatever is there is consistent
    assert not (Stage(out, {"payload": "B"}).done and (out / "payload.txt").read_text() != "B" * 100)
    rerun = worker(out, "B")
    assert ended(rerun) == 0, said(rerun)
    assert finished_payload(out) == "B"
    assert sorted(os.listdir(out.parent)) == ["thing"]  # leftovers of the killed finish are gone
    assert sorted(os.listdir(out)) == ["payload.txt", STAGE_FILE]


def test_a_full_disk_during_a_rebuild_keeps_the_finished_stage_and_the_run_usable(tmp_path):
    out = tmp_path / "run" / "thing"
    assert ended(worker(out, "A")) == 0
    full = worker(out, "B" * 64, FILE_SIZE_LIMIT="4096")  # its payload.txt needs 6400 bytes
    assert ended(full) == 1
    assert "File too large" in said(full)
    assert finished_payload(out) == "A"  # the old output is untouched and still up to date
    rerun = worker(out, "B" * 64)
    assert ended(rerun) == 0, said(rerun)
    assert finished_payload(out) == "B" * 64
    assert sorted(os.listdir(out.parent)) == ["thing"]


# ---- 4. folders tokenlm did not make ------------------------------------------------------------

def test_a_users_folder_where_a_stage_goes_is_refused_not_deleted(tmp_path):
    mine = tmp_path / "thing" / "mywork" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("precious")
    with pytest.raises(ArtifactError, match="not made by tokenlm") as err:
        Stage(tmp_path / "thing", {"k": 8}).build("thing", lambda work: None)
    assert "\n" not in str(err.value)
    assert mine.read_text() == "precious"
    assert not (tmp_path / LOCK_FILE).exists()  # the refusal gave the lock back


def test_a_symlink_or_a_file_where_a_stage_goes_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (tmp_path / "linked").symlink_to(target)
    (tmp_path / "file").write_text("a file")
    for name in ("linked", "file"):
        with pytest.raises(ArtifactError, match="not made by tokenlm"):
            Stage(tmp_path / name, {"k": 8}).build(name, lambda work: None)
    assert (target / "keep.txt").read_text() == "keep" and (tmp_path / "file").read_text() == "a file"


def test_prepare_refuses_to_replace_a_users_folder_at_run_features(make_corpus, tmp_path, capsys):
    corpus = make_corpus(labels=2, groups=2, clips=1)
    notes = tmp_path / "run" / "features" / "mywork" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes")
    assert run_cli("prepare", "--data", corpus, "--out", tmp_path / "run") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "not made by tokenlm" in err[-1]
    assert notes.read_text() == "my notes"


def test_an_empty_folder_or_a_finished_stage_may_be_replaced(tmp_path):
    (tmp_path / "thing").mkdir()
    Stage(tmp_path / "thing", {"k": 8}).build("thing", lambda work: (work / "a").write_text("8") and None)
    Stage(tmp_path / "thing", {"k": 16}).build("thing", lambda work: (work / "a").write_text("16") and None)
    assert (tmp_path / "thing" / "a").read_text() == "16"


# ---- 11. durability: fsync before every rename that publishes --------------------------------

def test_files_and_folders_are_flushed_before_the_renames_that_publish_them(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    monkeypatch.setattr(artifacts.os, "replace", replace)
    stage = Stage(tmp_path / "thing", {"k": 8})
    work = stage.start()
    (work / "sub").mkdir()
    (work / "sub" / "weights.bin").write_bytes(b"w" * 1000)
    np.save(work / "codebook.npy", np.zeros((4, 2)))
    stage.finish()
    synced_before_publish = {path for kind, path in events[:events.index(("rename", str(stage.out_dir)))]
                             if kind == "fsync"}
    stage_json = work / f".{STAGE_FILE}.tmp-{os.getpid()}"  # flushed as itself, then renamed
    for path in (work / "sub" / "weights.bin", work / "codebook.npy", stage_json, work / "sub", work):
        assert str(path) in synced_before_publish, path
    assert events[-1] == ("fsync", str(tmp_path))  # the rename itself

    events.clear()
    write_json(tmp_path / "meta.json", {"a": 1})
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "rename", "fsync"] and events[-1][1] == str(tmp_path)


# ---- 6. finished files checked against stage.json --------------------------------------------

def _finished(tmp_path) -> Stage:
    stage = Stage(tmp_path / "thing", {"k": 8})
    work = stage.start()
    (work / "model.safetensors").write_bytes(b"m" * 4096)
    (work / "ckpt").mkdir()
    (work / "ckpt" / "last.json").write_bytes(b"c" * 100)
    with keeping_checkpoints():
        stage.finish()
    return stage


def test_stage_json_records_the_size_and_hash_of_every_output_file(tmp_path):
    from tokenlm.run.artifacts import verify

    stage = _finished(tmp_path)
    files = read_json(stage.out_dir / STAGE_FILE)["files"]
    assert set(files) == {"model.safetensors", "ckpt/last.json"}
    assert files["model.safetensors"]["size"] == 4096
    assert files["ckpt/last.json"]["sha256"] == artifacts.file_hash(stage.out_dir / "ckpt" / "last.json")
    verify(stage.out_dir)


def test_a_truncated_or_missing_output_is_not_up_to_date_and_fails_to_load(tmp_path, capsys):
    from tokenlm.run.artifacts import check_outputs

    stage = _finished(tmp_path)
    weights = stage.out_dir / "model.safetensors"
    os.truncate(weights, 100)  # a disk that filled up, a copy cut short, a power cut
    assert not Stage(stage.out_dir, {"k": 8}).done
    assert not Stage(stage.out_dir, {"k": 8}).up_to_date("thing")
    assert "model.safetensors is 100 bytes" in capsys.readouterr().err  # says why it rebuilds
    with pytest.raises(ArtifactError, match="model.safetensors is 100 bytes"):
        check_outputs(stage.out_dir)
    weights.unlink()
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        check_outputs(stage.out_dir)


def test_verify_sees_changed_bytes_of_the_same_size(tmp_path):
    from tokenlm.run.artifacts import check_outputs

    stage = _finished(tmp_path)
    (stage.out_dir / "model.safetensors").write_bytes(b"x" * 4096)
    with pytest.raises(ArtifactError, match="model.safetensors has changed"):
        check_outputs(stage.out_dir)  # what loaders call (issue 23.5: it used to see sizes only)
    with pytest.raises(ArtifactError, match="model.safetensors has changed"):
        stage.verify()


def test_a_stage_finished_before_file_records_is_still_trusted(tmp_path):
    stage = _finished(tmp_path)
    record = read_json(stage.out_dir / STAGE_FILE)
    del record["files"]
    write_json(stage.out_dir / STAGE_FILE, record)
    assert Stage(stage.out_dir, {"k": 8}).done
    artifacts.check_outputs(stage.out_dir)


@pytest.mark.parametrize("name", ["autoencoder.safetensors", "config.json", "k8/config.json"])
def test_loading_a_tokenizer_with_a_truncated_file_names_the_file(tiny_run, tmp_path, name):
    import shutil

    from tokenlm.tokenizer.tokenizer import AudioTokenizer

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "tokenizer", run / "tokenizer")
    path = run / "tokenizer" / name
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(ArtifactError, match=f"{path.name} is \\d+ bytes"):
        AudioTokenizer.load(run / "tokenizer", codebook_size=8)


@pytest.mark.parametrize("loader, weights", [("lm", "model.safetensors"), ("vocoder", "wavenet.safetensors")])
def test_loading_an_lm_or_vocoder_with_a_truncated_file_names_the_file(tmp_path, loader, weights):
    from tokenlm.lm.code_lm import CodeLM
    from tokenlm.vocoder.vocoder import Vocoder

    stage = Stage(tmp_path / loader, {"k": 8})
    work = stage.start()
    (work / "config.json").write_text(json.dumps({"format": "x"}))
    (work / weights).write_bytes(b"w" * 2048)
    stage.finish()
    os.truncate(stage.out_dir / weights, 10)
    load = {"lm": CodeLM.load, "vocoder": Vocoder.load}[loader]
    with pytest.raises(ArtifactError, match=f"{weights} is 10 bytes"):
        load(stage.out_dir)


@pytest.mark.parametrize("store", ["features", "tokens/k8"])
def test_reading_features_or_tokens_with_a_truncated_file_names_the_file(tiny_run, tmp_path, store):
    import shutil

    from tokenlm.run.rundir import read_feature_meta, read_tokens_meta

    copy = tmp_path / store
    shutil.copytree(tiny_run / store, copy)
    read = read_feature_meta if store == "features" else read_tokens_meta
    read(copy)
    os.truncate(copy / "train.bin", 6)  # cut short: a whole number of neither vectors nor codes
    with pytest.raises(ArtifactError, match="train.bin is 6 bytes"):
        read(copy)


# ---- 1. the case: two `prepare` commands on one run, different configs ------------------

# argv: GATE ARGS...: `tokenlm ARGS` that holds still between building its stage and
# finishing it (with the run's lock held) until GATE.go appears, saying GATE.started.
HELD_COMMAND = r"""
import os, sys, time
from pathlib import Path
from tokenlm.run.artifacts import Stage

gate, real_finish = Path(sys.argv[1]), Stage.finish

def finish_when_told(self, extra=None):
    gate.with_suffix(".started").write_text(str(os.getpid()))
    while not gate.with_suffix(".go").exists():
        time.sleep(0.01)
    return real_finish(self, extra)

Stage.finish = finish_when_told
from tokenlm.cli import main
main(sys.argv[2:])
"""


def test_two_prepares_with_different_configs_on_one_run_never_mix(make_corpus, tmp_path, monkeypatch, capsys):
    from tokenlm.data.features import FeatureConfig
    from tokenlm.pipeline.prepare import prepare

    corpus, run = make_corpus(labels=2, groups=2, clips=1), tmp_path / "run"
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        first = subprocess.Popen([sys.executable, "-c", HELD_COMMAND, tmp_path / "gate", "prepare", "--data", corpus,
                                  "--out", run], env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=err)
    first.log = log
    SPAWNED.append(first)
    wait_for(tmp_path / "gate.started", first)
    recipe = tmp_path / "f_min50.yaml"
    recipe.write_text("features:\n  f_min: 50\n")
    monkeypatch.setenv("TOKENLM_LOCK_WAIT", "0")
    capsys.readouterr()
    assert run_cli("prepare", "--data", corpus, "--out", run, "--config", recipe) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"in use by pid {first.pid}" in err[0]
    (tmp_path / "gate.go").touch()
    assert ended(first) == 0, said(first)

    def features_match_their_record(f_min: float) -> None:
        record, meta = read_json(run / "features" / STAGE_FILE), read_json(run / "features" / "meta.json")
        assert record["config"]["features"]["f_min"] == meta["f_min"] == f_min
        reference = prepare(corpus, tmp_path / f"reference{f_min}", FeatureConfig(f_min=f_min), progress=False)
        assert (run / "features" / "train.bin").read_bytes() == (reference / "train.bin").read_bytes()

    features_match_their_record(0.0)
    assert run_cli("prepare", "--data", corpus, "--out", run, "--config", recipe) == 0  # now it may
    features_match_their_record(50.0)
