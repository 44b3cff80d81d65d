"""Data-parallel training: N processes in one process group, spawned here on one machine or started by a
launcher (torchrun, srun + torchrun) across nodes.

    netroller train --index work/index.parquet --out work/runs/baseline --batch-size 8 --num-workers 4
    netroller train ... --device cuda --num-workers 8        # one process per GPU, rank r on cuda:r (NCCL)
    torchrun --nnodes 2 --nproc-per-node 8 ... -m netroller.cli.main train ... --device cuda

The only module that knows about process groups and launching. `run_stage(stage, args, workers=N, ...)`
runs a stage the way this process was started:
- by a launcher, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (`Launched.from_env`):
  this process joins that group (init_method env://), on cuda:LOCAL_RANK with NCCL or on the CPU with gloo,
  and runs `stage(*args)` itself; asking for spawned workers as well is refused;
- with `workers` > 1: `launch` spawns N processes (torch.multiprocessing, start method "spawn": nothing
  unpicklable crosses, and CUDA is never initialised before the fork), joins them through a file store in
  a fresh temp dir (no port to pick or collide on), calls `stage(*args)` in each, returns rank 0's result;
- else `stage(*args)` here.
Inside a group `current_group()` gives the `WorkerGroup` the training loop uses; outside it is None and
training runs as one process. Ranks other than 0 print nothing on stdout.

Why not Ray Train: one more scheduler on top of the same process group, heavier to start on small machines,
and the harvest is already where Ray belongs (style rule 4: Ray only at the edges).

`SyncBatchNorm` exists because torch's `nn.SyncBatchNorm` refuses CPU tensors: with per-worker batch
statistics a 2-worker run would not equal a 1-worker one (the backbone's BatchNorm sees B/N samples).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.multiprocessing.spawn import ProcessException

from netroller.errors import ConfigError, NetrollerError, WorkerError
from netroller.storage.atomic import write_bytes_atomic

# Long enough for the slowest rank's setup (opening a cache, loading a baseline) before the first collective.
DEFAULT_TIMEOUT = timedelta(minutes=30)
# Ranks must hold bit-identical weights; this only absorbs a backend that reduces in another order.
SYNC_TOLERANCE = 1e-6


@dataclass(frozen=True)
class WorkerGroup:
    """This process's place in the data-parallel group, and the collectives training needs."""

    rank: int
    size: int
    device: torch.device
    local_size: int
    """Processes of the group on this machine (they share its cores)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes logs and checkpoints."""
        return self.rank == 0

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Each key summed over the ranks (every rank passes the same keys in the same order)."""
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(values, t.tolist(), strict=True))

    def sum_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Sum every gradient over the ranks, in one flat all-reduce.

        Summed, not averaged: each rank's loss is already its share of the global batch's loss. A parameter
        with no gradient on any rank keeps None (AdamW then skips it, as in a 1-worker run); one with a
        gradient on some rank only gets zeros from the others.
        """
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        has = [p.grad is not None for p in params]
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
            + [torch.tensor(has, dtype=torch.float32, device=self.device)]
        )
        dist.all_reduce(flat)
        offset = 0
        present = flat[-len(params) :]
        for i, p in enumerate(params):
            n = p.numel()
            if present[i] > 0:
                p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
            else:
                p.grad = None
            offset += n

    def broadcast_state(self, modules: Iterable[nn.Module]) -> None:
        """Rank 0's parameters and buffers on every rank (their random inits may differ)."""
        with torch.no_grad():
            for m in modules:
                for t in m.state_dict().values():
                    dist.broadcast(t, src=0)

    def check_in_sync(self, modules: dict[str, nn.Module]) -> None:
        """WorkerError naming the first parameter whose ranks disagree (a module left out of the all-reduce)."""
        names, sums = [], []
        for prefix, m in modules.items():
            for name, p in m.named_parameters():
                names.append(f"{prefix}{name}")
                sums.append(p.detach().double().sum())
        if not sums:
            return
        hi, lo = torch.stack(sums), torch.stack(sums).clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        bad = ((hi - lo).abs() > SYNC_TOLERANCE * (1 + hi.abs())).nonzero().flatten().tolist()
        if bad:
            raise WorkerError(
                f"data-parallel workers hold different weights for {names[bad[0]]} "
                f"(and {len(bad) - 1} more parameters): its gradients were not all-reduced"
            )


_GROUP: WorkerGroup | None = None


def current_group() -> WorkerGroup | None:
    """The data-parallel group of this worker process, or None when training runs as one process."""
    return _GROUP


def worker_devices(device: str, workers: int) -> list[str]:
    """One device per rank: all "cpu", or cuda:0..N-1 for any CUDA device string (ConfigError otherwise)."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if kind == "cpu":
        return ["cpu"] * workers
    if kind != "cuda":
        raise ConfigError(f"--num-workers {workers} runs on cpu or cuda devices, got --device {device!r}")
    available = torch.cuda.device_count()
    if available < workers:
        raise ConfigError(
            f"--num-workers {workers} needs one GPU per worker, this machine has {available} (--device {device})"
        )
    return [f"cuda:{r}" for r in range(workers)]


def default_threads(workers: int) -> int:
    """Torch threads per worker: OMP_NUM_THREADS if set, else this process's CPUs shared out evenly among
    the `workers` processes on this machine."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // workers)


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launched:
    """This process's place in a group a launcher started, from the variables torchrun sets (any launcher
    that sets them works: srun + torchrun, a cluster's job runner)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    """LOCAL_WORLD_SIZE (torchrun sets it); WORLD_SIZE when absent, so that threads are never oversubscribed."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Launched | None:
        """None when no launcher started this process (none of RANK, WORLD_SIZE, LOCAL_RANK set);
        ConfigError naming a missing or malformed variable."""
        if not any(name in environ for name in LAUNCHER_VARIABLES[:3]):
            return None
        missing = [name for name in LAUNCHER_VARIABLES if not environ.get(name)]
        if missing:
            raise ConfigError(
                f"a launcher set {', '.join(n for n in LAUNCHER_VARIABLES if environ.get(n))} but not "
                f"{', '.join(missing)}: start training with torchrun (or set all of {', '.join(LAUNCHER_VARIABLES)})"
            )
        values = {}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            text = environ.get(name, environ["WORLD_SIZE"] if name == "LOCAL_WORLD_SIZE" else "")
            if not text.isdigit():
                raise ConfigError(f"the launcher's {name} must be a non-negative integer, got {text!r}")
            values[name] = int(text)
        if not values["RANK"] < values["WORLD_SIZE"] or not values["LOCAL_RANK"] < values["LOCAL_WORLD_SIZE"]:
            raise ConfigError(
                f"the launcher's RANK {values['RANK']} / LOCAL_RANK {values['LOCAL_RANK']} do not fit "
                f"WORLD_SIZE {values['WORLD_SIZE']} / LOCAL_WORLD_SIZE {values['LOCAL_WORLD_SIZE']}"
            )
        return cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])

    def device(self, device: str) -> torch.device:
        """cuda:LOCAL_RANK for any CUDA device string (one process per GPU), else the CPU."""
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise ConfigError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if kind == "cpu":
            return torch.device("cpu")
        if kind != "cuda":
            raise ConfigError(
                f"a launched process group runs on cpu or cuda devices, got --device {device!r}"
            )
        available = torch.cuda.device_count()
        if self.local_rank >= available:
            raise ConfigError(
                f"LOCAL_RANK {self.local_rank} needs GPU {self.local_rank}, this machine has {available}: "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        return torch.device(f"cuda:{self.local_rank}")


def world_size(workers: int) -> int:
    """The data-parallel process count of a run asking for `workers` spawned processes: the launcher's
    WORLD_SIZE when one started this process (ConfigError if spawned workers were asked for too)."""
    launched = Launched.from_env()
    if launched is None:
        return workers
    if workers > 1:
        raise ConfigError(
            f"--num-workers {workers} spawns processes on this machine, but a launcher started this one "
            f"(RANK {launched.rank} of WORLD_SIZE {launched.world_size}): leave --num-workers out, the "
            "launcher sets the processes (torchrun --nnodes / --nproc-per-node)"
        )
    return launched.world_size


def is_main_process() -> bool:
    """Rank 0 of the launcher's group, or no launcher (where this process is the run)."""
    launched = Launched.from_env()
    return launched is None or launched.rank == 0


def run_stage(stage: Callable[..., Any], args: tuple, *, workers: int, device: str = "cpu") -> Any:
    """`stage(*args)` as this process was started: in the launcher's group, in `workers` spawned
    processes (rank 0's result), or here. The stage's config must already count the group's processes
    (`world_size`)."""
    launched = Launched.from_env()
    if launched is None:
        return launch(stage, args, workers=workers, device=device) if workers > 1 else stage(*args)
    if workers not in (1, launched.world_size):
        world_size(workers)  # raises, naming both
    torch.set_num_threads(default_threads(launched.local_world_size))
    with _joined(
        launched.rank, launched.world_size, launched.local_world_size, launched.device(device), "env://"
    ):
        return stage(*args)


@contextlib.contextmanager
def _joined(
    rank: int,
    size: int,
    local_size: int,
    device: torch.device,
    init_method: str,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Iterator[WorkerGroup]:
    """This process as `rank` of a process group (NCCL on CUDA, else gloo), for the duration."""
    global _GROUP
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size, timeout=timeout)
    _GROUP = WorkerGroup(rank=rank, size=size, device=device, local_size=local_size)
    stdout = sys.stdout
    if rank != 0:
        # Every rank runs the same stage; one copy of its printed lines is enough.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (closed on the way out)
    try:
        yield _GROUP
    finally:
        if rank != 0:
            sys.stdout.close()
            sys.stdout = stdout
        _GROUP = None
        dist.destroy_process_group()


def launch(
    stage: Callable[..., Any],
    args: tuple,
    *,
    workers: int,
    device: str = "cpu",
    threads: int | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """Run `stage(*args)` in `workers` processes joined in one process group; rank 0's return value.

    `stage` and `args` are pickled to the workers: a module-level function and plain configs (each worker
    builds its own model, dataset and hooks from them). A NetrollerError raised in a worker is raised here
    as the same class and message; any other failure becomes a WorkerError naming the rank.
    """
    if workers < 1:
        raise ConfigError(f"--num-workers must be >= 1, got {workers}")
    devices = worker_devices(device, workers)
    threads = threads or default_threads(workers)
    # The temp dir holds the process group's file store and each rank's outcome (files, not a queue: a
    # worker never blocks on a full pipe while the parent waits for it to exit).
    tmp = Path(tempfile.mkdtemp(prefix="netroller-ddp-"))
    # torch logs each peer it terminates after a failure; the failure itself is raised as one clear line.
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    try:
        try:
            mp.start_processes(
                _worker,
                args=(workers, devices, threads, str(tmp), timeout, stage, args),
                nprocs=workers,
                start_method="spawn",
            )
        except ProcessException as err:
            raise _worker_failure(tmp, workers, err) from None
        outcome = _outcome(tmp, 0)
    finally:
        spawn_log.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
    return outcome[1] if outcome is not None else None


def _outcome(tmp: Path, rank: int) -> tuple | None:
    path = tmp / f"rank{rank}.pkl"
    return pickle.loads(path.read_bytes()) if path.is_file() else None


def _worker_failure(tmp: Path, workers: int, err: ProcessException) -> NetrollerError:
    """The error to raise for a failed launch: the first rank's NetrollerError as itself, else WorkerError."""
    # The rank torch saw fail first is the likeliest cause; the others may only have lost their peer.
    for rank in [err.error_index, *range(workers)]:
        outcome = _outcome(tmp, rank)
        if outcome is not None and outcome[0] == "error":
            _, module, qualname, message = outcome
            cls = getattr(importlib.import_module(module), qualname, None)
            if isinstance(cls, type) and issubclass(cls, NetrollerError):
                return cls(message)
            return WorkerError(message)
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return WorkerError(f"data-parallel worker {err.error_index} failed: {lines[-1] if lines else err}")


def _worker(
    rank: int,
    workers: int,
    devices: list[str],
    threads: int,
    tmp: str,
    timeout: timedelta,
    stage: Callable[..., Any],
    args: tuple,
) -> None:
    """One spawned worker: join the group, run the stage, leave its result or error for the parent."""
    torch.set_num_threads(threads)
    result = Path(tmp) / f"rank{rank}.pkl"
    with _joined(rank, workers, workers, torch.device(devices[rank]), f"file://{tmp}/store", timeout):
        try:
            out = stage(*args)
            write_bytes_atomic(result, pickle.dumps(("ok", out if rank == 0 else None)))
        except Exception as err:
            cls = type(err)
            if not isinstance(err, NetrollerError):
                cls, err = WorkerError, f"data-parallel worker {rank} failed: {cls.__name__}: {err}"
            write_bytes_atomic(result, pickle.dumps(("error", cls.__module__, cls.__qualname__, str(err))))
            raise


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of each rank's input is the sum of every rank's
    output gradient (torch.distributed.nn's version is deprecated, its successor not differentiable)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every rank's samples, on any device and backend.

    The statistics are two differentiable all-reduces (sum and count, then the centred sum of squares), so
    the backward pass sees how each rank's inputs moved everyone's mean and variance, exactly as one
    process with the whole batch would. Same parameters and buffers as the layer it replaces, so
    checkpoints are interchangeable; eval mode (running statistics) is the plain layer.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not dist.is_initialized() or not (self.training or self.running_mean is None):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        channels = x.shape[1]
        count = x.new_tensor([x.numel() / channels])
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))  # [C + 1]
        n = total[-1].detach()
        mean = total[:channels] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n  # biased, as BatchNorm normalises
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), n)
        return y

    def _update_running(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        # torch's rule: momentum, or a cumulative average when momentum is None; unbiased running variance.
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        with torch.no_grad():
            self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            self.running_var.mul_(1 - factor).add_(var * n / (n - 1).clamp(min=1), alpha=factor)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer under `module` by a `SyncBatchNorm` holding the same state (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            sync = SyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            sync.requires_grad_(any(p.requires_grad for p in child.parameters()))
            like = next(child.buffers(), None)
            setattr(module, name, sync if like is None else sync.to(like.device))
        else:
            convert_batchnorm(child)
    return module
