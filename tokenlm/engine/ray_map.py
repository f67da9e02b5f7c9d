"""Blocks of clips through Ray Data, in order: ``map_blocks(engine, Worker, args, blocks)``.

``Worker(*args)`` is built once per Ray worker process and kept there (a tokenizer's weights
are loaded once per process, from its folder, never shipped per batch) and called as
``worker(number, block)`` for each block, returning a small picklable result (its shard files
are written by the worker itself). Blocks run as Ray Data tasks, not actors: the worker
processes, with torch imported, serve every stage of a session, where an actor pool would
start new ones per stage. Blocks and results travel pickled, so any picklable clip or row does. The results
come back in block order, streamed: the driver holds a few at a time.

A worker process that dies (killed, out of memory) is replaced and its block run again, up to
``engine.retries`` times (Ray Data's default, -1, would rerun forever a clip that crashes its
decoder every time); workers write shards under temporary names and rename them when complete, so a rerun
block overwrites its shards cleanly.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from contextlib import contextmanager
from typing import Iterator

from tokenlm.core.errors import ConfigError, TokenlmError
from tokenlm.engine import EngineConfig


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
        ray.init(num_cpus=engine.workers or len(os.sched_getaffinity(0)), **quiet)  # the CPUs we may use
    try:
        yield ray
    finally:
        ray.shutdown()


def map_blocks(engine: EngineConfig, worker: type, args: tuple, blocks: list[list], *,
               progress: bool = True, gpus: float = 0.0) -> Iterator:
    """``worker(*args)(number, block)`` for every block on Ray Data tasks, the results yielded
    in block order; each task asks Ray for ``gpus`` GPUs too. A TokenlmError raised by a worker
    is raised here as itself (one line)."""
    if not blocks:
        return
    with ray_session(engine) as ray:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results in block order
        context.enable_progress_bars = False  # the stage has its own bar
        # No execution plans or traces on stderr: a failure comes back here as an exception and
        # is said in one line; Ray Data's own log file (ray_data.log) keeps the traces.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if gpus > ray.cluster_resources().get("GPU", 0):  # else Ray Data would wait for them forever
            raise ConfigError(f"engine.gpus_per_worker is {gpus:g}, but the Ray cluster has "
                              f"{ray.cluster_resources().get('GPU', 0):g} GPUs: set it to 0 (CPU workers)")
        workers = max(1, min(engine.workers or cpus, len(blocks)))
        items = [{"number": number, "block": pickle.dumps(block)} for number, block in enumerate(blocks)]
        with warnings.catch_warnings():
            # max_retries has no named parameter in Ray Data 2.60 (the extra pins ray < 2.64,
            # where the catch-all goes): the catch-all's deprecation warning is known.
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _run_blocks, fn_args=(worker, args), batch_size=1, batch_format="numpy",
                compute=ray.data.TaskPoolStrategy(size=workers), num_cpus=1, max_retries=engine.retries,
                **({"num_gpus": gpus} if gpus else {}))
        expected = 0
        try:
            for row in dataset.iter_rows():
                number, result = pickle.loads(row["result"])
                if number != expected:  # preserve_order is what makes the output deterministic
                    raise RuntimeError(f"Ray returned block {number} where block {expected} belongs")
                expected += 1
                yield result
        except Exception as err:
            cause = _tokenlm_error(err)
            if cause is not None:
                raise cause from None
            if _worker_died(err, ray):  # e.g. a clip that crashes its decoder, every time
                raise TokenlmError(f"--engine ray: a worker died {engine.retries + 1} times on one block "
                                   f"(block {expected} or later): see the Ray workers' logs "
                                   f"(python-core-worker-*.log)") from None
            raise


def _tokenlm_error(err: BaseException | None) -> TokenlmError | None:
    """The TokenlmError a worker raised, under Ray's wrappers (``cause``, ``__cause__``)."""
    for _ in range(10):
        if err is None or isinstance(err, TokenlmError):
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


def _worker_died(err: BaseException | None, ray) -> bool:
    """Whether a Ray Data failure is a worker process that died (under Ray's wrappers)."""
    for _ in range(10):
        if err is None:
            return False
        if isinstance(err, ray.exceptions.WorkerCrashedError):
            return True
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return False


_built: dict = {}  # in a worker process: the last Worker built, by (class, args)


def _run_blocks(batch: dict, worker: type, args: tuple) -> dict:
    """A Ray Data task: ``worker(*args)`` (built once per process) on each block of the batch."""
    key = (worker, repr(args))  # the args are configs and paths, whose repr says what they are
    if key not in _built:
        _built.clear()  # a new stage's worker: let the last one's model go
        _built[key] = worker(*args)
    results = [pickle.dumps((int(number), _built[key](int(number), pickle.loads(block))))
               for number, block in zip(batch["number"], batch["block"])]
    return {"result": results}
