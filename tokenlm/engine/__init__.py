"""Where the corpus-sized work of ``prepare`` and ``tokenize`` runs: ``local`` (this process,
the default) or ``ray`` (Ray Data tasks on a local Ray instance or a cluster,
``tokenlm.engine.ray_map``). Either way the clips are cut into the same blocks of about
``block_seconds`` of audio (``blocks``), so the outputs are the same bytes whatever the engine
and however many workers; only the layout of the arrays differs (one file per split locally,
one shard per block and split under Ray: ``tokenlm.data.store``).

Recipe (top level)::

    engine:
      name: ray            # local | ray
      address: auto        # a Ray cluster to join; default: RAY_ADDRESS, else a local instance
      workers: 8           # Ray workers (one CPU each); default: every CPU of the cluster
      block_seconds: 600   # audio per task
      retries: 3           # reruns of a block whose worker process died
      gpus_per_worker: 0   # GPUs (or a fraction of one) each encoding worker asks Ray for

On the command line: ``--engine``, ``--ray-address``, ``--ray-workers``, ``--ray-gpus-per-worker``
(``engine_options``). With ``gpus_per_worker`` > 0 the workers that encode (``tokenize``) run
the tokenizer on the GPU Ray gives them (CUDA_VISIBLE_DEVICES), on the CPU where torch sees
none; ``prepare``'s workers stay on CPUs (log-mel features are cheap and their bytes are
the CPU's). Untested on a real GPU: only the plumbing is tested, on CPUs.
Under Ray every worker writes into the stage's folder: on a cluster, the run folder must be
on a file system every node mounts at the same path.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineConfig:
    """Which engine encodes and featurises, and how it is cut up (see the module docstring)."""

    name: str = "local"
    address: str | None = None
    workers: int | None = None
    block_seconds: float = 600.0
    retries: int = 3
    gpus_per_worker: float = 0.0

    def __post_init__(self):
        if self.name not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.name!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.retries < 0:
            raise ValueError(f"retries must be at least 0, got {self.retries}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be at least 0, got {self.gpus_per_worker}")
        if not self.block_seconds > 0:
            raise ValueError(f"block_seconds must be positive, got {self.block_seconds}")

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"


LOCAL = EngineConfig()


def engine_config(section: dict | None, name: str | None = None, address: str | None = None,
                  workers: int | None = None, gpus_per_worker: float | None = None) -> EngineConfig:
    """The recipe's ``engine:`` section under the command-line options (None: not given)."""
    from tokenlm.core.config import build

    return build(EngineConfig, section, {"name": name, "address": address, "workers": workers,
                                         "gpus_per_worker": gpus_per_worker}, where="engine")


def engine_session(engine: EngineConfig):
    """Around a command that runs several stages: under Ray, one Ray session for all of them
    (a local instance starts once, not per stage); locally, nothing."""
    if not engine.is_ray:
        return nullcontext()
    from tokenlm.engine.ray_map import ray_session

    return ray_session(engine)


def blocks(items: list, seconds, block_seconds: float) -> list[list]:
    """``items`` cut in order into blocks of at least ``block_seconds`` of audio (the last may
    hold less), ``seconds(item)`` each: the units of work, fixed by the data alone, never by
    the number of workers."""
    out, block, total = [], [], 0.0
    for item in items:
        block.append(item)
        total += seconds(item)
        if total >= block_seconds:
            out.append(block)
            block, total = [], 0.0
    if block:
        out.append(block)
    return out
