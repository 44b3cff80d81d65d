"""Data-parallel training on one machine: N worker processes, one process group.

    netroller train --index work/index.parquet --out work/runs/baseline --batch-size 8 --num-workers 4
    netroller train ... --device cuda --num-workers 8        # one process per GPU, rank r on cuda:r (NCCL)

The only module that knows about process groups and launching. `launch(stage, args, workers=N, ...)` spawns
N processes (torch.multiprocessing, start method "spawn": nothing unpicklable crosses, and CUDA is never
initialised before the fork), joins them through a file store in a fresh temp dir (no port to pick or
collide on), calls `stage(*args)` in each, and returns rank 0's result. Inside a worker `current_group()`
gives the `WorkerGroup` the training loop uses; outside it is None and training runs as one process.

Why not Ray Train: one more scheduler on top of the same process group, heavier to start on small machines,
and the harvest is already where Ray belongs (style rule 4: Ray only at the edges).

`SyncBatchNorm` exists because torch's `nn.SyncBatchNorm` refuses CPU tensors: with per-worker batch
statistics a 2-worker run would not equal a 1-worker one (the backbone's BatchNorm sees B/N samples).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
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
    """Torch threads per worker: OMP_NUM_THREADS if set, else this process's CPUs shared out evenly."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // workers)


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
    global _GROUP
    torch.set_num_threads(threads)
    device = torch.device(devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=f"file://{tmp}/store", rank=rank, world_size=workers, timeout=timeout
    )
    _GROUP = WorkerGroup(rank=rank, size=workers, device=device)
    if rank != 0:
        # Every rank runs the same stage; one copy of its printed lines is enough.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    result = Path(tmp) / f"rank{rank}.pkl"
    try:
        out = stage(*args)
        write_bytes_atomic(result, pickle.dumps(("ok", out if rank == 0 else None)))
    except Exception as err:
        cls = type(err)
        if not isinstance(err, NetrollerError):
            cls, err = WorkerError, f"data-parallel worker {rank} failed: {cls.__name__}: {err}"
        write_bytes_atomic(result, pickle.dumps(("error", cls.__module__, cls.__qualname__, str(err))))
        raise
    finally:
        _GROUP = None
        dist.destroy_process_group()


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
