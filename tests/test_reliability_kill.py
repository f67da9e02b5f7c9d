"""Issue 11, round 2: kill -9 inside every stage's own writes, then a rerun finishes it as an
uninterrupted run would; a read-only RUN gets one line and stays as it was; a NaN batch on one
torchrun rank stops every rank with the one-line error; `tokenize --tokenizer` publishes
OUT/manifest.jsonl only when its stage finishes and stamps the input files like prepare."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, write_corpus

from tokenlm.core.fileio import read_json, read_jsonl
from tokenlm.run.artifacts import Stage, stage_key, verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# ---- (c) under torchrun a NaN batch on one rank stops every rank ------------------------------

# Run by torchrun: a tiny DDP model trained with the shared loop; rank 1's batch of step 3 is
# NaN. Each rank writes the error it stopped with into OUT/rank{r}.txt.
NAN_SCRIPT = """
import sys
from pathlib import Path

import torch

from tokenlm.core.errors import TokenlmError
from tokenlm.training import TrainConfig, setup_distributed, train

out = Path(sys.argv[1])
dist = setup_distributed("cpu")
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
drawn = []


def batch(rng, size):
    drawn.append(size)
    x = torch.from_numpy(rng.standard_normal((size, 4))).float()
    return x * float("nan") if dist.rank == 1 and len(drawn) == 3 else x


try:
    train(model, TrainConfig(steps=20, batch_size=4, warmup_steps=1, eval_every=10, device="cpu"), out / "work",
          loss_fn=lambda m, x: (m(x) ** 2).mean(), train_batch=batch, dist=dist, progress=False)
except TokenlmError as err:
    (out / f"rank{dist.rank}.txt").write_text(str(err))
    sys.exit(1)
"""


def test_a_nan_batch_on_one_rank_stops_every_rank_with_one_line(tmp_path):
    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(tmp_path)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode != 0
    said = {r: (tmp_path / f"rank{r}.txt") for r in (0, 1)}
    assert all(path.exists() for path in said.values()), done.stdout + done.stderr
    assert "training batch of step 3 holds NaN" in said[1].read_text()
    assert "NaN or infinite on 1 other process" in said[0].read_text()
    assert all(len(path.read_text().splitlines()) == 1 for path in said.values())


# ---- (d) tokenize --tokenizer: the manifest belongs to its stage ------------------------------

def test_new_data_manifest_is_published_only_when_the_stage_finishes(tiny_run, tmp_path, capsys):
    corpus = tiny_run.parent / "corpus"
    (tmp_path / "new").mkdir()
    bad = tmp_path / "new" / "broken.wav"
    bad.write_bytes(b"not audio")
    out = tmp_path / "out"
    # a dataset with a clip that cannot be decoded, --strict: the stage fails, no manifest is published
    data = tmp_path / "data"
    for path in corpus.rglob("*.wav"):
        (data / path.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(path, data / path.parent.name / path.name)
    os.symlink(bad, data / path.parent.name / "broken.wav")
    assert run_cli("tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", data, "--out", out,
                   "--device", "cpu", "--strict") == 1
    err = capsys.readouterr().err
    assert "--strict: 1 clip(s) skipped" in err and "every clip's status" in err
    assert not (out / "manifest.jsonl").exists()
    # the same data without --strict finishes, and the published manifest is the stage's own
    assert run_cli("tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", data, "--out", out,
                   "--device", "cpu") == 0
    tokens = out / "tokens" / "k8"
    assert (out / "manifest.jsonl").read_bytes() == (tokens / "manifest.jsonl").read_bytes()
    rows = {r["id"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert rows[f"{path.parent.name}/broken"]["status"] == "skipped"
    # --strict on the finished stage with its skipped clip: still refused, in one line
    capsys.readouterr()
    assert run_cli("tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", data, "--out", out,
                   "--device", "cpu", "--strict") == 1
    assert "--strict: 1 clip(s) skipped" in capsys.readouterr().err
    # removed, it comes back from the finished stage without encoding again
    (out / "manifest.jsonl").unlink()
    assert run_cli("tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", data, "--out", out,
                   "--device", "cpu") == 0
    assert "up to date" in capsys.readouterr().err
    assert (out / "manifest.jsonl").read_bytes() == (tokens / "manifest.jsonl").read_bytes()


@pytest.mark.parametrize("hashed", [False, True], ids=["stamps", "hash-content"])
def test_new_data_input_files_are_stamped_like_prepare(tiny_run, tmp_path, hashed):
    flag = ["--hash-content"] if hashed else []
    assert run_cli("tokenize", "--tokenizer", tiny_run / "tokenizer", "--data", tiny_run.parent / "corpus",
                   "--out", tmp_path / "out", "--device", "cpu", *flag) == 0
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert rows and all({"size", "mtime_ns", "ctime_ns", "inode"} <= set(r["file"]) for r in rows)
    assert all(("sha256" in r["file"]) == hashed for r in rows)


# ---- (b) a read-only RUN ------------------------------------------------------------------------

@pytest.fixture
def read_only_copy(tiny_run, tmp_path):
    """A copy of the tiny run, seen read-only through a bind mount (skipped where mounting is
    not permitted, e.g. without root)."""
    source, view = tmp_path / "source", tmp_path / "run"
    shutil.copytree(tiny_run, source)
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    try:
        remounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remounted.stderr.strip()}")
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir() or p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("command", ["tokenize", "prepare"])
def test_a_read_only_run_gets_one_line_and_is_left_unchanged(read_only_copy, tiny_run, capsys, command):
    before = tree(read_only_copy)
    recipe = read_only_copy.parent / "recipe.yaml"
    recipe.write_text("features: {f_min: 30}\n")  # new features: prepare must write
    args = {"tokenize": ["-K", "4", "--device", "cpu"],  # a new codebook and tokens
            "prepare": ["--data", tiny_run.parent / "corpus", "--config", recipe]}[command]
    capsys.readouterr()
    assert run_cli(command, "--out", read_only_copy, *args) == 1
    err = capsys.readouterr().err.strip()  # progress lines ("autoencoder up to date"), then the error
    assert "Traceback" not in err and [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]
    assert err.splitlines()[-1].startswith("error: ") and "read-only" in err.lower(), err
    assert tree(read_only_copy) == before


# ---- (a) kill -9 in the middle of every stage's own writes ----------------------------------------

STAGES = ["features", "tokenizer", "tokenizer/k4", "tokens/k4", "lm", "baselines/timbre", "probe/corpus", "vocoder",
          "sweep"]
COMMAND_OF = {"features": "prepare", "tokenizer": "tokenize", "tokenizer/k4": "tokenize", "tokens/k4": "tokenize",
              "lm": "pretrain", "baselines/timbre": "baselines", "probe/corpus": "probe", "vocoder": "vocoder",
              "sweep": "sweep"}
PIPELINE = ["prepare", "tokenize", "pretrain", "baselines", "probe", "vocoder", "sweep"]
RECIPE = """
run: {{dir: {run}}}
data: {{path: {data}}}
split: {{val_fraction: 0.34, test_fraction: 0.33}}
tokenizer:
  codebook_size: 4
  autoencoder: {{hidden: [16, 8], bottleneck: 4}}
  training: {{epochs: 2, batch_size: 64}}
lm:
  n_layer: 1
  n_head: 1
  n_embd: 8
  context: 16
  training: {{steps: 4, batch_size: 2, warmup_steps: 1, eval_every: 2}}
probe: {{baselines: [timbre], epochs: 1, batch_size: 8, timbre_filters: 4, crop_seconds: 0.25, max_iter: 50}}
vocoder:
  layers_per_cycle: 1
  cycles: 1
  residual_channels: 2
  gate_channels: 2
  skip_channels: 2
  cond_channels: 2
  crop_codes: 2
  val_crops: 1
  metrics_clips: 1
  metrics_seconds: 0.1
  training: {{steps: 2, batch_size: 2, eval_every: 2, warmup_steps: 1}}
sweep: {{codebook_sizes: [4], with_vocoder: false}}
"""
TIMINGS = ("seconds", "_per_s", "elapsed", "wall_time", "rtf")  # how long it took: the only fields a kill may change


def without_timings(value):
    """``value`` (parsed JSON) without the fields that say how long something took."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not (k.endswith("_s") or any(t in k for t in TIMINGS))}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_recipe(root: Path, data: Path, stages: list[str]) -> int:
    """`tokenlm run` of the tiny recipe's ``stages`` (commands) into ROOT/run."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(RECIPE.format(run=root / "run", data=data))
    return run_cli("run", root / "recipe.yaml", "--stages", ",".join(stages), "--device", "cpu")


def run_before(stage: str, reference: Path, root: Path) -> None:
    """ROOT/run := the reference run without ``stage`` and the stages after it: the stages
    before are finished (a copy, up to date by their keys), ``stage`` is next."""
    shutil.copytree(reference, root / "run", symlinks=True)
    for later in reversed(STAGES[STAGES.index(stage):]):
        shutil.rmtree(root / "run" / later, ignore_errors=True)


def killed_inside(stage: str, root: Path, data: Path) -> int:
    """Run the recipe in a forked child that, the first time it flushes a file or folder
    (os.fsync: checkpoints, JSON, features, codes, weights) inside ``stage``, kills itself with
    SIGKILL: the stage has written part of its work, not all of it. Returns the child's signal."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            inside, real_start, real_fsync = [], Stage.start, os.fsync

            def start(self):
                inside.append(self.out_dir.relative_to(self.run_root).as_posix())
                return real_start(self)

            def fsync(fd):
                if stage in inside:  # its first flush (the sweep's may be in a stage it nests)
                    os.kill(os.getpid(), signal.SIGKILL)
                real_fsync(fd)

            Stage.start, os.fsync = start, fsync
            run_recipe(root, data, [COMMAND_OF[stage]])
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def records(run: Path, upto: str) -> dict:
    """Each stage's key and the content of its output files (each matching its size and hash
    in stage.json): the run's own path written as RUN, timings left out, checkpoints and
    reports by name."""
    found = {}
    for stage in STAGES[:STAGES.index(upto) + 1]:
        verify(run / stage)
        files = {}
        for name in read_json(run / stage / "stage.json")["files"]:
            data = (run / stage / name).read_bytes().replace(str(run).encode(), b"RUN")
            if name.endswith(".json"):
                data = without_timings(json.loads(data))
            elif name.endswith(".csv"):
                rows = [line.split(",") for line in data.decode().splitlines()]
                keep = [i for i, column in enumerate(rows[0]) if not any(t in column for t in TIMINGS)]
                data = [[row[i] for i in keep] for row in rows]
            elif name.startswith("ckpt/") or name.endswith(".md"):
                data = None  # resume state, or a report of the results above: both hold timings
            files[name] = data
        found[stage] = (stage_key(run / stage), files)
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("kill")
    data = write_corpus(root / "corpus", labels=3, groups=3, clips=1, seconds=0.5)
    assert run_recipe(root / "reference", data, PIPELINE) == 0
    return data, root / "reference" / "run", records(root / "reference" / "run", STAGES[-1])


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_inside_a_stages_writes_then_a_rerun_finishes_it_as_if_never_killed(uninterrupted, tmp_path, stage):
    data, reference, expected = uninterrupted
    run_before(stage, reference, tmp_path)
    assert killed_inside(stage, tmp_path, data) == signal.SIGKILL  # it did reach a write inside the stage
    assert not (tmp_path / "run" / stage / "stage.json").exists()  # ...and died before finishing it
    assert run_recipe(tmp_path, data, [COMMAND_OF[stage]]) == 0
    found = records(tmp_path / "run", stage)
    assert {s: key for s, (key, _) in found.items()} == {s: expected[s][0] for s in found}
    files, reference_files = found[stage][1], expected[stage][1]  # the stages before it are copies
    assert not {name for name in {*files, *reference_files} if files.get(name) != reference_files.get(name)}
