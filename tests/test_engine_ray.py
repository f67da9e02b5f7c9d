"""``--engine ray``: prepare and tokenize on a local Ray cluster (started once for the module,
loopback only, 2 CPUs) write the same bytes as local mode, with 1 or 2 workers, and when a
worker process dies mid-block; without Ray installed, the engine asks for the extra in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, write_corpus
from tokenlm.data.clips import SPLITS
from tokenlm.data.store import RaggedSplit

BLOCKS = "engine:\n  block_seconds: 3\n"  # the tiny corpus (1 s clips) in several blocks, hence shards


def kill_first_writer(directory: Path):
    """A Ray worker setup hook: once ``directory/armed`` exists, the first worker to write a
    clip into a store dies on the spot (a real process exit, mid-block), once; while
    ``directory/always`` exists, every worker that writes a clip dies."""
    def setup() -> None:
        from tokenlm.data.store import RaggedWriter

        add = RaggedWriter.add

        def add_or_die(self, row, array):
            add(self, row, array)
            if (directory / "always").exists():
                os._exit(1)
            if (directory / "armed").exists():
                try:
                    os.close(os.open(directory / "killed", os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    return
                os._exit(1)

        RaggedWriter.add = add_or_die

    return setup


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook travels by value
    switch = tmp_path_factory.mktemp("kill")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             runtime_env={"worker_process_setup_hook": kill_first_writer(switch)})
    yield switch
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The tiny run's kind of corpus, plus a file that cannot be decoded (skipped the same way)."""
    root = write_corpus(tmp_path_factory.mktemp("engine") / "corpus", labels=3, groups=3, clips=2, seconds=1.0)
    (root / "class0" / "broken.wav").write_bytes(b"RIFF not really audio")
    (root.parent / "blocks.yaml").write_text(BLOCKS)
    return root


def store(folder: Path, dtype: str, width: int = 1) -> dict:
    """What a store holds, layout aside: meta.json, each split's index and arrays."""
    out = {"meta": json.loads((folder / "meta.json").read_text())}
    for split in SPLITS:
        ragged = RaggedSplit(folder, split, dtype, width)
        out[split] = (ragged.rows, [np.asarray(a).tobytes() for _, a in ragged])
    return out


def tokenize(out: Path, tiny_run: Path, corpus: Path, *engine) -> dict:
    assert run_cli("tokenize", out, "--tokenizer", tiny_run / "tokenizer", "--data", corpus,
                   "--config", corpus.parent / "blocks.yaml", *engine) == 0
    manifest = (out / "manifest.jsonl").read_text()
    return {"manifest": manifest, **store(out / "tokens" / "k8", "uint16")}


@pytest.fixture(scope="module")
def local_tokens(tmp_path_factory, tiny_run, corpus) -> dict:
    tokens = tokenize(tmp_path_factory.mktemp("local"), tiny_run, corpus)
    assert '"status": "skipped"' in tokens["manifest"]
    return tokens


def test_tokenize_on_ray_is_local_bytes(tmp_path, ray_cluster, tiny_run, corpus, local_tokens):
    two = tokenize(tmp_path, tiny_run, corpus, "--engine", "ray", "--ray-workers", "2")
    assert len(list((tmp_path / "tokens" / "k8").glob("train-*.bin"))) > 1  # sharded
    assert two == local_tokens


def test_worker_killed_mid_block_is_retried(tmp_path, ray_cluster, tiny_run, corpus, local_tokens):
    (ray_cluster / "armed").touch()
    try:  # one worker: the same bytes as two, and as local
        killed = tokenize(tmp_path, tiny_run, corpus, "--engine", "ray", "--ray-workers", "1")
    finally:
        (ray_cluster / "armed").unlink()
    assert (ray_cluster / "killed").exists()  # a worker did die
    assert killed == local_tokens
    assert not list(tmp_path.rglob("*.tmp-*"))  # the dead attempt's partial shard is gone


def test_a_block_that_always_kills_its_worker_fails_in_one_line(tmp_path, ray_cluster, tiny_run, corpus, capsys):
    (ray_cluster / "always").touch()
    try:
        (tmp_path / "once.yaml").write_text("engine:\n  retries: 1\n")
        code = run_cli("tokenize", tmp_path / "run", "--tokenizer", tiny_run / "tokenizer", "--data", corpus,
                       "--config", tmp_path / "once.yaml", "--engine", "ray", "--ray-workers", "1")
    finally:
        (ray_cluster / "always").unlink()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "a worker died 2 times on one block" in err.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "tokens" / "k8" / "stage.json").exists()  # nothing finished


def test_prepare_on_ray_is_local_bytes(tmp_path, ray_cluster, corpus):
    runs = {}
    for name, engine in [("local", ()), ("ray", ("--engine", "ray", "--ray-workers", "2"))]:
        run = tmp_path / name
        assert run_cli("prepare", run, "--data", corpus, "--config", corpus.parent / "blocks.yaml", *engine) == 0
        runs[name] = {"manifest": (run / "features" / "manifest.jsonl").read_text(),
                      **store(run / "features", "float16", width=64)}
    assert list((tmp_path / "ray" / "features").glob("train-0000*.bin"))
    assert runs["ray"] == runs["local"]


def test_ray_engine_without_ray_says_how_to_install(tmp_path, corpus):
    script = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
              "from tokenlm.cli import main\n"
              "for engine in ('local', 'ray'):\n"
              "    try:\n        main(['prepare', sys.argv[1] + engine, '--data', sys.argv[2], '--engine', engine])\n"
              "    except SystemExit as exit_:\n        print(engine, exit_.code)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", script, tmp_path / "run-", corpus], env=env,
                          capture_output=True, text=True)
    assert done.stdout.split() == ["ray", "1"], done.stderr  # local mode ran without Ray
    assert done.stderr.strip().splitlines()[-1] == "error: --engine ray needs Ray Data: pip install 'tokenlm[ray]'"
    assert "Traceback" not in done.stderr


def test_engine_recipe_section_and_blocks():
    from tokenlm.core.errors import ConfigError
    from tokenlm.engine import blocks, engine_config

    assert engine_config({"name": "ray", "workers": 4}, None, "auto").address == "auto"
    assert engine_config({"name": "ray"}, "local").name == "local"  # the command line wins
    with pytest.raises(ConfigError, match="engine must be one of local, ray"):
        engine_config({"name": "spark"})
    with pytest.raises(ConfigError, match="unknown option 'engine.cores'"):
        engine_config({"cores": 2})
    # Blocks of at least 3 s of audio, in order, whatever runs them.
    assert blocks([1, 2, 1, 4, 1, 1], float, 3.0) == [[1, 2], [1, 4], [1, 1]]
    assert blocks([], float, 3.0) == []


class _ReportGpus:
    """A block's worker that says which GPUs Ray gave its process and the device it encodes on."""

    def __init__(self):
        import ray

        from tokenlm.core.runtime import pick_device

        self.gpus, self.device = [str(g) for g in ray.get_gpu_ids()], str(pick_device("auto"))

    def __call__(self, number: int, block: list) -> dict:
        return {"gpus": self.gpus, "device": self.device, "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_gpus_per_worker_setting_reaches_ray_and_the_workers(tmp_path, ray_cluster, tiny_run, corpus, local_tokens):
    """engine.gpus_per_worker / --ray-gpus-per-worker: on a cluster with no GPU a one-line error
    (Ray Data would otherwise wait forever); 0 keeps the CPU path. Only the plumbing: no GPU here,
    the GPU path itself is untested."""
    from tokenlm.core.errors import ConfigError
    from tokenlm.engine import EngineConfig, engine_config
    from tokenlm.engine.ray_map import map_blocks

    assert engine_config({"gpus_per_worker": 0.5}).gpus_per_worker == 0.5
    assert engine_config({"gpus_per_worker": 0.5}, gpus_per_worker=1).gpus_per_worker == 1  # the command line wins
    assert engine_config(None).gpus_per_worker == 0
    with pytest.raises(ConfigError, match="gpus_per_worker must be at least 0"):
        engine_config({"gpus_per_worker": -1})
    with pytest.raises(ConfigError, match="the Ray cluster has 0 GPUs"):
        list(map_blocks(EngineConfig("ray", workers=1), _ReportGpus, (), [[1]], progress=False, gpus=1))
    code = run_cli("tokenize", tmp_path / "run", "--tokenizer", tiny_run / "tokenizer", "--data", corpus,
                   "--engine", "ray", "--ray-workers", "1", "--ray-gpus-per-worker", "1")
    assert code == 1 and not (tmp_path / "run" / "tokens" / "k8" / "stage.json").exists()
    reports = list(map_blocks(EngineConfig("ray", workers=1), _ReportGpus, (), [[1], [2]], progress=False))
    assert [r["gpus"] for r in reports] == [[], []] and {r["device"] for r in reports} == {"cpu"}


def test_a_gpu_worker_is_given_its_gpu_by_ray(tmp_path):
    """On a Ray instance that declares one (logical) GPU, a worker asking for 1 is handed GPU 0
    (CUDA_VISIBLE_DEVICES) and, torch seeing no CUDA here, encodes on the CPU."""
    pytest.importorskip("ray")
    script = ("import json, sys, ray\n"
              "sys.path.insert(0, sys.argv[1])\n"
              "ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, _node_ip_address='127.0.0.1',"
              " logging_level='WARNING')\n"
              "from tests.test_engine_ray import _ReportGpus\n"
              "from tokenlm.engine import EngineConfig\n"
              "from tokenlm.engine.ray_map import map_blocks\n"
              "print(json.dumps(list(map_blocks(EngineConfig('ray', workers=1), _ReportGpus, (), [[1]],"
              " progress=False, gpus=1))))\n")
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["gpus"] == ["0"] and report["visible"] == "0" and report["device"] == "cpu"
