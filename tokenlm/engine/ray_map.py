"""Blocks of clips through Ray Data, in order: ``map_blocks(engine, Worker, args, blocks)``.

``Worker(*args)`` is built once per Ray actor (a tokenizer's weights are loaded once per
worker, from its folder, never shipped per batch) and called as ``worker(number, block)`` for
each block, returning a small picklable result (its shard files are written by the worker
itself). Blocks and results travel pickled, so any picklable clip or row does. The results
come back in block order, streamed: the driver holds a few at a time.

A worker process that dies (killed, out of memory) is restarted and its block run again, up
to RETRIES times; workers write shards under temporary names and rename them when complete,
so a rerun block overwrites its shards cleanly.
"""

from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from typing import Iterator

from tokenlm.engine import EngineConfig
from tokenlm.errors import ConfigError

RETRIES = 3  # restarts of a dead worker, and reruns of its block


def import_ray():
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra: ray[data])
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'tokenlm[ray]'") from None
    return ray


@contextmanager
def ray_session(engine: EngineConfig):
    """Ray, joined at ``engine.address`` (else RAY_ADDRESS), else started here on this
    machine's CPUs (loopback, no dashboard) and shut down after. Already running: reused."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = engine.address or os.environ.get("RAY_ADDRESS")
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=engine.workers or os.cpu_count() or 1, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


def map_blocks(engine: EngineConfig, worker: type, args: tuple, blocks: list[list], *,
               progress: bool = True) -> Iterator:
    """``worker(*args)(number, block)`` for every block on Ray Data actors, the results yielded
    in block order."""
    if not blocks:
        return
    with ray_session(engine) as ray:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results in block order
        context.enable_progress_bars = progress
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = max(1, min(engine.workers or cpus, len(blocks)))
        items = [{"number": number, "block": pickle.dumps(block)} for number, block in enumerate(blocks)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _Actor, fn_constructor_args=(worker, args), batch_size=1, batch_format="numpy", concurrency=workers,
            num_cpus=1, ray_remote_args_fn=_retries)
        expected = 0
        for row in dataset.iter_rows():
            number, result = pickle.loads(row["result"])
            if number != expected:  # preserve_order is what makes the output deterministic
                raise RuntimeError(f"Ray returned block {number} where block {expected} belongs")
            expected += 1
            yield result


def _retries() -> dict:
    """A dead worker's restarts and its block's reruns (Ray Data's default: without end)."""
    return {"max_restarts": RETRIES, "max_task_retries": RETRIES}


class _Actor:
    """One Ray actor: the worker built once, then called per block (one block per batch)."""

    def __init__(self, worker: type, args: tuple):
        self.worker = worker(*args)

    def __call__(self, batch: dict) -> dict:
        results = [pickle.dumps((int(number), self.worker(int(number), pickle.loads(block))))
                   for number, block in zip(batch["number"], batch["block"])]
        return {"result": results}
