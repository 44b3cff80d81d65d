"""The Ray edge of the harvest: actors that each hold one GM and write whole shards.

The only module that imports Ray. It knows nothing of GMs or caches: the stage (`netroller.stages.harvest`)
hands it a picklable `load_worker` callable, which each actor calls once (loading the GM) to get the
function that computes and writes one shard; the stage runs that same function in-process without Ray.
Ray is a local instance sized for this machine by default, or an existing cluster through `ray_address` /
RAY_ADDRESS. Each actor (`num_cpus=1`, `num_gpus=G`) receives shard work units from the driver
(`ray.wait`; two queued per actor) and returns each shard's commit record. A small progress actor relays
per-sample counts to the driver's tqdm bar. A failed or dead worker leaves its shard uncommitted: the run
stops handing out work, lets the other in-flight shards finish, and raises `WorkerError` (a re-run resumes).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
import ray.exceptions

from netroller.errors import ClusterError, WorkerError

ShardFn = Callable[[int, list, Callable[[int], None] | None], Any]
"""compute(shard, rows, on_samples) -> the shard's commit record: computes and writes one whole shard,
calling on_samples(n) as rows finish."""
WorkUnit = tuple[int, list]
"""(shard, the rows it holds), in the stage's own row type."""

# Work units and commit records are small (records in, a checksum record out), so a local instance needs
# little object store; Ray's own default (30% of RAM) would take memory from the GMs on a small machine.
LOCAL_OBJECT_STORE_BYTES = 96 * 1024**2
_POLL_S = 0.25
_PROBE_S = 5.0  # seconds to wait for a cluster address to accept a TCP connection
# An actor reserves one CPU, so it computes on one thread: more actors, not more threads, is how a harvest
# scales. Measured on a shared 2-core machine: the tiny GM took 0.03 s/sample on 1 thread and 0.07-0.41 s on
# 2 threads when other processes also ran (OpenMP threads spin against each other).
TORCH_THREADS_PER_ACTOR = 1
# A second shard waits in each actor's queue, so it starts the moment the first is written instead of after
# a round trip to the driver (measured: ~25% of the tiny GM's per-sample time at shard size 4).
SHARDS_QUEUED_PER_ACTOR = 2


@ray.remote(num_cpus=0)
class _Progress:
    """Counts finished samples reported by the actors; the driver takes the count while it waits."""

    def __init__(self) -> None:
        self._count = 0

    def add(self, n: int) -> None:
        self._count += n

    def take(self) -> int:
        n, self._count = self._count, 0
        return n


@ray.remote
class HarvestActor:
    """Calls `load_worker()` once (the GM is loaded there), then computes the shards it is handed."""

    def __init__(
        self,
        load_worker: Callable[[], ShardFn],
        torch_threads: int,
        progress: ray.actor.ActorHandle | None,
    ) -> None:
        import torch
        from transformers.utils import logging as transformers_logging

        # torch's default (one thread per core, in every actor) oversubscribes a machine shared by actors.
        torch.set_num_threads(torch_threads)
        transformers_logging.disable_progress_bar()  # one "Loading weights" bar per actor is noise in the driver's log
        self._progress = progress
        self._compute = load_worker()

    def ready(self) -> int:
        return os.getpid()

    def peak_rss_bytes(self) -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    def run(self, shard: int, rows: list) -> Any:
        progress = self._progress
        return self._compute(
            shard, rows, (lambda n: progress.add.remote(n)) if progress is not None else None
        )


def connect(ray_address: str | None, workers: int) -> bool:
    """Join a running Ray, a cluster, or start a local instance; True when this call started Ray.

    An existing cluster keeps its own sizing: Ray refuses num_cpus / object_store_memory from a driver that
    joins one, so those are passed only to a local instance. ClusterError names an address that fails.
    """
    if ray.is_initialized():
        return False
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, ray.exceptions.RayError, RuntimeError, ValueError) as err:
            raise ClusterError(f"cannot join the Ray cluster at {address}: {_cluster_hint(err)}") from err
    else:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, workers),
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=False,
        )
    return True


def check_reachable(address: str) -> None:
    """ClusterError at once when nothing listens at a "host:port" / "ray://host:port" address.

    Ray's own join keeps retrying an unreachable GCS for many minutes (measured: over 10 with Ray 2.60), so a
    mistyped --ray-address would look like a hung harvest. "auto" and other forms are left to Ray.
    """
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_S).close()
    except OSError as err:
        raise ClusterError(
            f"cannot join the Ray cluster at {address}: nothing answers at {host}:{port} "
            f"({err.strerror or type(err).__name__})"
        ) from err


def _cluster_hint(err: BaseException) -> str:
    """One line for a failed join; Ray 2.60's token authentication is the non-obvious cause, so say so."""
    chain = [err, err.__cause__] if err.__cause__ is not None else [err]
    if any(type(e).__name__ == "AuthenticationError" for e in chain):
        return (
            "the cluster requires its auth token; set RAY_AUTH_MODE=token and give the cluster's token "
            "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        )
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


def start_actors(
    load_worker: Callable[[], ShardFn],
    workers: int,
    gpus_per_worker: float,
    progress: ray.actor.ActorHandle | None,
) -> list[ray.actor.ActorHandle]:
    """Start `workers` actors and wait until each has run `load_worker` (WorkerError if one fails to)."""
    actors = [
        HarvestActor.options(num_cpus=1, num_gpus=gpus_per_worker).remote(
            load_worker, TORCH_THREADS_PER_ACTOR, progress
        )
        for _ in range(workers)
    ]
    try:
        ray.get([a.ready.remote() for a in actors])
    except ray.exceptions.RayError as err:
        for a in actors:
            ray.kill(a)
        raise WorkerError(f"a harvest worker failed to start: {_first_line(err)}") from err
    return actors


def _first_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def dispatch(
    actors: Sequence[ray.actor.ActorHandle],
    work: Sequence[WorkUnit],
    progress: ray.actor.ActorHandle | None,
    on_samples: Callable[[int], None],
) -> list:
    """Keep every actor fed with shards until all are written; WorkerError naming the first failed shard."""
    queue = list(work)
    load = [0] * len(actors)  # shards queued or running per actor
    inflight: dict[ray.ObjectRef, tuple[int, int]] = {}  # ref -> (shard, actor position)
    commits: list = []
    failed: tuple[int, BaseException] | None = None
    while queue or inflight:
        for i, actor in enumerate(actors):
            while queue and failed is None and load[i] < SHARDS_QUEUED_PER_ACTOR:
                shard, rows = queue.pop(0)
                inflight[actor.run.remote(shard, rows)] = (shard, i)
                load[i] += 1
        if not inflight:
            break
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
        if progress is not None and (n := ray.get(progress.take.remote())):
            on_samples(n)
        for ref in done:
            shard, i = inflight.pop(ref)
            try:
                commits.append(ray.get(ref))
                load[i] -= 1
            except ray.exceptions.RayError as err:
                # No more work is handed out (a dead actor's queue fails too); in-flight shards may finish.
                if failed is None:
                    failed = (shard, err)
    if failed is not None:
        shard, err = failed
        raise WorkerError(
            f"harvest worker failed on shard {shard}: {_first_line(err)}; "
            f"{len(commits)} other shard(s) committed; re-run the same harvest to resume"
        ) from err
    return commits


def run_shards(
    load_worker: Callable[[], ShardFn],
    work: Sequence[WorkUnit],
    *,
    workers: int,
    gpus_per_worker: float = 0.0,
    ray_address: str | None = None,
    on_samples: Callable[[int], None] = lambda n: None,
    on_ready: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = lambda msg: None,
) -> list:
    """Write every shard of `work` on `workers` Ray actors, each computing with what its `load_worker()`
    returned; returns their commit records.

    `load_worker` is pickled to every actor (a module-level function, or a method of a plain dataclass).
    `on_ready()` is called once the actors have loaded their GMs (the driver restarts its rate clock there).
    """
    if not work:
        return []
    start = time.perf_counter()
    started = connect(ray_address, workers)
    address = ray_address or os.environ.get("RAY_ADDRESS")
    how = ("connected to " + address if address else "started locally") if started else "already running"
    resources = ray.cluster_resources()
    log(
        f"harvest: Ray {how} "
        f"({int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs) in {time.perf_counter() - start:.1f} s"
    )
    progress = None
    actors: list[ray.actor.ActorHandle] = []
    try:
        progress = _Progress.remote()
        start = time.perf_counter()
        actors = start_actors(load_worker, min(workers, len(work)), gpus_per_worker, progress)
        log(f"harvest: {len(actors)} worker(s) loaded the GM in {time.perf_counter() - start:.1f} s")
        on_ready()
        return dispatch(actors, work, progress, on_samples)
    finally:
        for a in actors:
            ray.kill(a)
        if progress is not None:
            ray.kill(progress)
        if started:
            ray.shutdown()
