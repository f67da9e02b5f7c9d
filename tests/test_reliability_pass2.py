"""Issue 23, cases 2-12: the second reliability pass, one test (or a few) per case, each
reproducing the defect as it was reported. Case 1 (the lock race) is tests/test_reliability_race.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import tokenlm
from tests.conftest import tone
from tokenlm.core.errors import ArtifactError, ConfigError, TokenlmError
from tokenlm.core.fileio import read_json, read_jsonl, write_json
from tokenlm.run.artifacts import STAGE_FILE, Stage, stage_key
from tokenlm.run.rundir import MANIFEST, RunDir

CODE_ROOT = Path(tokenlm.__file__).resolve().parents[1]  # the tokenlm under test, for the subprocesses


def python(code: str, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(CODE_ROOT), **env}, timeout=300)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> RunDir:
    """A copy of the session's tiny trained run, free to write into."""
    shutil.copytree(tiny_run, tmp_path / "run", symlinks=True)
    return RunDir(tmp_path / "run")


# ---- 2. containment on the path actually opened ----------------------------------------------

def _tar_with(path: Path, name: str, data: bytes) -> int:
    """Write a tar holding one member; returns the offset of its data."""
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return tar.getmembers()[0].offset_data


def test_a_tar_member_path_cannot_lead_outside_the_dataset_folder(make_corpus, tmp_path):
    from tokenlm.data.layouts import scan_dataset

    data = make_corpus(layout="csv")
    wav = next(data.rglob("*.wav")).read_bytes()
    offset = _tar_with(tmp_path / "outside.tar", "x.wav", wav)
    # the reported row: the tar part leads out, the member part leads back in
    (data / "manifest.csv").write_text(f"path,label\n../outside.tar#{offset}+{len(wav)}/../{data.name}/x.wav,a\n")
    with pytest.raises(ConfigError, match="outside the dataset folder"):
        scan_dataset(data)


def test_a_symlink_inside_the_dataset_folder_cannot_lead_outside_it(make_corpus, tmp_path):
    from tokenlm.data.layouts import scan_dataset

    data = make_corpus(layout="csv")
    shutil.copy(next(data.rglob("*.wav")), tmp_path / "secret.wav")
    (data / "link.wav").symlink_to(tmp_path / "secret.wav")
    (data / "manifest.csv").write_text("path,label\nlink.wav,a\n")
    with pytest.raises(ConfigError, match="outside the dataset folder"):
        scan_dataset(data)
    assert scan_dataset(data, allow_outside=True)[1][0].path == str(tmp_path / "secret.wav")


# ---- 3. nothing of the user's overwritten ----------------------------------------------------

def test_export_refuses_a_folder_of_the_users_and_leaves_its_files(run_copy, tmp_path):
    from tokenlm.pipeline.export import export

    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.units").write_text("my own notes\n")
    with pytest.raises(ArtifactError, match="tokenlm did not write"):
        export(run_copy, "units", out=out)
    assert (out / "train.units").read_text() == "my own notes\n"


def test_a_new_export_over_an_earlier_one_leaves_no_stale_file(run_copy, tmp_path):
    from tokenlm.pipeline.export import export, read_export

    out = tmp_path / "codes"
    export(run_copy, "npy", out=out)
    assert (out / "index.jsonl").is_file()
    export(run_copy, "units", out=out)
    assert not (out / "index.jsonl").exists() and not (out / "train").exists()
    assert sum(len(v) for v in read_export(out, "units").values()) > 0


def test_report_refuses_to_overwrite_a_users_report(run_copy):
    from tokenlm.pipeline.report import write_report

    (run_copy.root / "report.md").write_text("# my notes\n")
    with pytest.raises(ArtifactError, match="report.md was not written by tokenlm"):
        write_report(run_copy.root)
    assert (run_copy.root / "report.md").read_text() == "# my notes\n"
    (run_copy.root / "report.md").unlink()
    write_report(run_copy.root)  # its own report, and then again over its own
    write_report(run_copy.root)
    assert (run_copy.root / "report.md").read_text().startswith("# tokenlm run: run")


def test_prepare_refuses_to_overwrite_a_users_manifest_jsonl(make_corpus, tmp_path):
    from tokenlm.pipeline.prepare import prepare

    data = make_corpus()
    run = tmp_path / "mine"
    run.mkdir()
    (run / MANIFEST).write_text('{"path": "a.wav", "label": "dog"}\n')  # the user's own dataset manifest
    with pytest.raises(ArtifactError, match="manifest.jsonl was not written by tokenlm"):
        prepare(data, run, progress=False)
    assert (run / MANIFEST).read_text() == '{"path": "a.wav", "label": "dog"}\n'


def _recipe(tmp_path: Path, data: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  path: {data}\nstages: [prepare]\n")
    return recipe


def test_run_out_a_folder_with_a_users_stage_folder_writes_nothing(make_corpus, tmp_path):
    from tokenlm.pipeline.run import run_recipe

    out = tmp_path / "theirs"
    (out / "features").mkdir(parents=True)
    (out / "features" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not made by tokenlm"):
        run_recipe(_recipe(tmp_path, make_corpus()), out=out)
    assert sorted(p.name for p in out.iterdir()) == ["features"]  # no recipe.yaml written before the refusal


# ---- 4. a refused run changes nothing; publications under the lock ---------------------------

HOLDER = r"""
import sys
from tokenlm.run import lock as runlock
runlock.acquire(sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()
"""


def test_a_refused_second_run_leaves_recipe_yaml_as_it_was(make_corpus, tmp_path, monkeypatch):
    from tokenlm.pipeline.run import run_recipe
    from tokenlm.run.lock import RunLocked

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("# The recipe as run (overrides applied): `tokenlm run` this file to "
                                     "reproduce the run.\nrun: {dir: elsewhere}\n")
    before = (run / "recipe.yaml").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(CODE_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        monkeypatch.setenv("TOKENLM_LOCK_WAIT", "0")
        with pytest.raises(RunLocked):
            run_recipe(_recipe(tmp_path, make_corpus()), out=run)
    finally:
        holder.kill()
        holder.wait()
    assert (run / "recipe.yaml").read_bytes() == before


def test_prepare_publishes_run_manifest_jsonl_under_the_runs_lock(make_corpus, tmp_path, monkeypatch):
    from tokenlm.pipeline import prepare as prepare_module
    from tokenlm.run import lock as runlock

    run = tmp_path / "run"
    held = []
    real = prepare_module.publish_copy

    def publish(source, dest, *args, **kwargs):
        held.append(runlock.holds(run))
        return real(source, dest, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "publish_copy", publish)
    prepare_module.prepare(make_corpus(), run, progress=False)  # built
    prepare_module.prepare(make_corpus(), run, progress=False)  # up to date
    assert held == [True, True]


# ---- 5. loaders check the bytes, not only the sizes ------------------------------------------

def _flip_a_byte(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_loading_a_tokenizer_whose_weights_changed_at_the_same_size_fails_in_one_line(run_copy):
    from tokenlm.tokenizer.tokenizer import AudioTokenizer

    weights = run_copy.tokenizer / "autoencoder.safetensors"
    size = weights.stat().st_size
    _flip_a_byte(weights)
    assert weights.stat().st_size == size
    with pytest.raises(ArtifactError, match=r"autoencoder.safetensors has changed .*: rerun the command") as info:
        AudioTokenizer.load(run_copy.tokenizer, codebook_size=8, device="cpu")
    assert "\n" not in str(info.value)


def test_an_edited_hash_in_stage_json_is_seen_on_rerun_and_on_load(run_copy):
    from tokenlm.run.rundir import read_tokens_meta

    record = read_json(run_copy.tokens(8) / STAGE_FILE)
    name = next(n for n in record["files"] if n.endswith(".bin"))
    record["files"][name]["sha256"] = "0" * 16
    write_json(run_copy.tokens(8) / STAGE_FILE, record)
    assert not Stage(run_copy.tokens(8), config=record["config"], inputs=record["inputs"]).done
    with pytest.raises(ArtifactError, match=f"{name} has changed"):
        read_tokens_meta(run_copy.tokens(8), 8)


# ---- 6. one line, not a traceback ------------------------------------------------------------

def test_a_segment_ending_at_infinity_is_refused_in_one_line(make_corpus, tmp_path):
    from tokenlm.pipeline.prepare import prepare

    data = make_corpus(layout="csv")
    first = sorted(data.rglob("*.wav"))[0].relative_to(data)
    (data / "manifest.csv").write_text(f"path,label,start,end\n{first},a,0,inf\n{first},a,0,0.1\n")
    with pytest.raises(ConfigError, match="start and end must be finite seconds"):
        prepare(data, tmp_path / "run", progress=False)


FULL_DISK = r"""
import os, resource, signal, sys, torch
from tokenlm import cli
from tokenlm.training.checkpoint import save_checkpoint

if sys.argv[2] == "fsize":  # a file size limit fails the write as a full disk does (EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
cli.cli.main = lambda **kwargs: save_checkpoint({"w": torch.zeros(100_000)}, os.path.join(sys.argv[1], "last.json"))
cli.main([])
"""


def _tiny_tmpfs(where: Path) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("how", ["fsize", "tmpfs"])
def test_a_full_disk_while_saving_a_safetensors_checkpoint_is_one_line(tmp_path, how):
    folder = tmp_path / "ckpt"
    if how == "tmpfs" and not _tiny_tmpfs(folder):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    folder.mkdir(exist_ok=True)
    try:
        done = python(FULL_DISK, folder, how)
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(folder)], check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    strerror = os.strerror(errno.ENOSPC if how == "tmpfs" else errno.EFBIG)
    assert done.stderr.startswith("error: ") and strerror in done.stderr and "last-" in done.stderr


# ---- 7. report.html never torn ---------------------------------------------------------------

REPORT_ON_A_FULL_DISK = r"""
import resource, signal, sys
from tokenlm.pipeline.report import write_report

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
write_report(sys.argv[1])
"""


def test_a_full_disk_while_writing_the_report_keeps_the_old_complete_one(run_copy):
    from tokenlm.pipeline.report import write_report

    manifest = run_copy.manifest.read_bytes()
    run_copy.manifest.unlink()  # a shorter report first
    write_report(run_copy.root)
    old_md, old_html = run_copy.report.read_bytes(), run_copy.report.with_suffix(".html").read_bytes()
    run_copy.manifest.write_bytes(manifest)  # the next report is longer than the file size limit
    limit = len(old_html) + 10
    done = python(REPORT_ON_A_FULL_DISK, run_copy.root, limit)
    assert done.returncode != 0
    md_after = run_copy.report.read_bytes()
    assert run_copy.report.with_suffix(".html").read_bytes() == old_html  # the old one, whole
    assert not list(run_copy.root.glob(".report*.tmp-*"))
    write_report(run_copy.root)  # with room: the new one
    assert md_after in (old_md, run_copy.report.read_bytes())  # report.md too: old or new, whole


# ---- 8. export is atomic ---------------------------------------------------------------------

EXPORT_KILLED = r"""
import os, signal, sys
import numpy as np
from tokenlm.pipeline import export

calls, real = [], np.save
def save(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real(*args, **kwargs)
export.np.save = save
export.export(sys.argv[1], "npy", out=sys.argv[2])
"""


def test_an_export_killed_midway_leaves_no_partial_output_and_the_next_one_completes(run_copy, tmp_path):
    from tokenlm.pipeline.export import export, read_export

    out = tmp_path / "codes"
    done = python(EXPORT_KILLED, run_copy.root, out)
    assert done.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing that looks like an export
    leftovers = list(tmp_path.glob(".codes.*"))
    assert leftovers and all((p / ".tokenlm-output").is_file() for p in leftovers)  # marked as tokenlm's work
    export(run_copy, "npy", out=out)
    assert not list(tmp_path.glob(".codes.*"))
    assert sum(len(v) for v in read_export(out, "npy").values()) == sum(
        len(read_jsonl(run_copy.tokens(8) / f"{s}.index.jsonl")) for s in ("train", "val", "test"))


# ---- 9. no run in / , a system folder, the home folder or above the current folder ---------

@pytest.mark.parametrize("where", ["/", "/usr/local/tokenlm-run", "home", "parent"])
def test_a_run_folder_that_is_no_place_for_a_run_is_refused_in_one_line(where, make_corpus, tmp_path, monkeypatch):
    from tokenlm.pipeline.run import run_recipe

    home = tmp_path / "home"
    (home / "work" / "here").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work" / "here")
    out = {"home": home, "parent": home / "work"}.get(where, where)
    recipe = _recipe(tmp_path, make_corpus())
    before = sorted(os.listdir(out)) if os.path.isdir(out) else None
    with pytest.raises(ConfigError, match="cannot be a run folder") as info:
        run_recipe(recipe, out=out)
    assert "\n" not in str(info.value)
    assert (sorted(os.listdir(out)) if os.path.isdir(out) else None) == before


# ---- 10. data pack and tar-slip --------------------------------------------------------------

def test_data_pack_refuses_member_names_that_would_extract_outside(make_corpus, tmp_path, capsys):
    from tokenlm.data.pack import pack_shards

    data = make_corpus(layout="csv")
    wavs = sorted(p.relative_to(data) for p in data.rglob("*.wav"))
    (data / "manifest.csv").write_text("path,label,id\n" + f"{wavs[0]},a,../../escaped\n"
                                       + f"{wavs[1]},a,/tmp/absolute\n" + f"{wavs[2]},a,fine/name\n")
    with pytest.raises(ConfigError, match="unsafe tar member names"):
        pack_shards(data, tmp_path / "shards")
    err = capsys.readouterr().err
    assert "'../../escaped'" in err and "'/tmp/absolute'" in err and "fine/name" not in err
    assert not list((tmp_path / "shards").glob("*.tar")) if (tmp_path / "shards").exists() else True


# ---- 11. export -K 0 -------------------------------------------------------------------------

def test_export_with_k_0_is_refused(run_copy, tmp_path):
    from tokenlm.pipeline.export import export

    with pytest.raises(ConfigError, match="at least 1"):
        export(run_copy, "units", codebook_size=0, out=tmp_path / "codes")
    assert not (tmp_path / "codes").exists()


# ---- 12. ctime alone is no change of content -------------------------------------------------

def test_hard_linked_inputs_are_still_the_files_prepare_read(make_corpus, tmp_path, capsys):
    from tokenlm.pipeline.prepare import prepare
    from tokenlm.vocoder.training_data import clip_rows  # what the vocoder, sweep and rawlm check the audio with

    data = make_corpus()
    run = RunDir(tmp_path / "run")
    prepare(data, run, progress=False)
    key = stage_key(run.features)
    (tmp_path / "links").mkdir()
    for n, wav in enumerate(sorted(data.rglob("*.wav"))):
        os.link(wav, tmp_path / "links" / f"{n}.wav")  # ctime changes, not a byte
    rows = clip_rows(run)  # used to refuse: "(ctime_ns differ): rerun prepare"
    capsys.readouterr()
    prepare(data, run, progress=False)
    assert "features up to date" in capsys.readouterr().err and stage_key(run.features) == key

    # the protection stays: other bytes at the same size and mtime are refused
    victim = Path(next(r for r in rows.values() if r["status"] == "ok")["path"])
    before = os.stat(victim)
    import soundfile as sf

    sf.write(victim, tone(1234.0, 0.25, 16000, amplitude=0.3), 16000, subtype="PCM_16")
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(victim).st_size == before.st_size
    with pytest.raises(ArtifactError, match="changed since `tokenlm prepare`"):
        clip_rows(run)


def test_a_chmod_after_prepare_hash_content_is_settled_by_the_recorded_hash(make_corpus, tmp_path):
    from tokenlm.data.files import check_unchanged
    from tokenlm.pipeline.prepare import prepare

    data = make_corpus()
    run = RunDir(tmp_path / "run")
    prepare(data, run, progress=False, hash_content=True)
    row = next(r for r in read_jsonl(run.manifest) if r["status"] == "ok")
    os.chmod(row["path"], 0o600)
    check_unchanged(row)  # no run needed: the stamp's own sha256 decides
    with open(row["path"], "r+b") as f:
        before = os.fstat(f.fileno())
        f.seek(-2, os.SEEK_END)
        f.write(b"\x01\x02")
    os.utime(row["path"], ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(TokenlmError, match="changed since"):
        check_unchanged(row)
