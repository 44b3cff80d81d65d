"""The train stage: VAD on the index's train split, with exact resume.

    netroller train --index work/index.parquet --out work/runs/baseline --recipe debug --epochs 2
    netroller train --index work/index.parquet --out work/runs/baseline --epochs 4 --resume
    netroller train --index work/index.parquet --out work/runs/ddp --batch-size 4 --num-workers 2

Run dir (files written by netroller.stages.run_dir):
    train_config.json, model_config.json         the configs, written before the first step
    checkpoints/epoch_0001.safetensors (+ .pt)    weights; optimizer, scheduler, RNG state and epoch beside
    checkpoints/last.safetensors (+ last.pt)      the latest epoch; last.pt is written last (the commit)
    metrics.jsonl                                 one JSON object per logged step and per epoch

Resume restarts after the last finished epoch with its model, optimizer, scheduler and RNG state; the data
order of epoch e depends only on (seed, e), so 1 epoch + resume + 1 epoch == 2 epochs. `TrainHooks` is where
the NetRoller fine-tune plugs in: extra trainable modules and a per-batch `BevShift`.

Data parallel (`workers` > 1 spawned here, or processes started by torchrun; see `netroller.distributed.ddp`):
each worker runs this same loop on its slice of every global batch (`netroller.stages.batching`), BatchNorm statistics and gradients are summed over the
workers, and the losses logged are the global batch's. Rank 0 alone writes the run dir. Dropout draws from a
generator reseeded per (seed, epoch, rank), so a resumed data-parallel run is exact too.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from netroller.data.dataset import SampleDataset, collate
from netroller.data.index import Index, read_index
from netroller.distributed.ddp import (
    Launched,
    WorkerGroup,
    convert_batchnorm,
    current_group,
    launch,
    run_stage,
    world_size,
)
from netroller.errors import ConfigError, ModelError
from netroller.models.vad.batch import Batch
from netroller.models.vad.config import RECIPES, VADConfig, config_from_dict, config_to_dict, recipe
from netroller.models.vad.detector import VAD
from netroller.models.vad.losses import vad_losses
from netroller.models.vad.perception_transformer import BevShift
from netroller.stages.batching import (
    epoch_generator,
    global_batches,
    global_loss,
    loss_shares,
    rank_share,
    term_counts,
)
from netroller.stages.run_dir import (
    HOOK_PREFIX,
    IMPORT_RECORD,
    MetricsLog,
    load_weights,
    save_checkpoint,
    split_weights,
    trim_metrics,
)
from netroller.storage.atomic import write_json_atomic


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one training run depends on (saved as train_config.json)."""

    index: Path
    """The sample index (Parquet) written by `prepare`."""
    out: Path
    """The run dir (configs, checkpoints, metrics.jsonl)."""
    recipe: str = "debug"
    """VAD recipe (a function of netroller.models.vad.config)."""
    epochs: int = 1
    """Total epochs (with --resume: the total to reach, not how many more)."""
    batch_size: int = 2
    """Samples per step: the global batch, split evenly among the data-parallel processes."""
    lr: float = 2e-4
    """Peak AdamW learning rate (the backbone gets lr * backbone_lr_mult)."""
    backbone_lr_mult: float = 0.1
    """Backbone learning-rate factor (VAD: 0.1)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (the NetRoller fine-tune uses (0.9, 0.95))."""
    warmup_steps: int = 10
    """Linear warm-up steps (optimizer steps) from warmup_ratio * lr to lr; cosine decay to min_lr_ratio * lr."""
    warmup_ratio: float = 1.0 / 3
    """Learning-rate factor at step 0 (mmcv's default warm-up ratio)."""
    min_lr_ratio: float = 1e-3
    """Learning-rate factor at the end of the cosine."""
    schedule: str = "step"
    """"step": the cosine advances every optimizer step; "epoch": once per epoch, the warm-up counted in
    micro-batches (mmcv's CosineAnnealing with warmup_by_epoch, as VAD's and the authors' configs run it)."""
    accumulate: int = 1
    """Micro-batches per optimizer step: each global batch of batch_size runs as `accumulate` micro-batches
    (split further among `workers`) whose gradients add up to the whole batch's, exactly (see
    `netroller.stages.batching`); a forward pass without gradients first gives the step's loss counts."""
    grad_clip: float = 35.0
    """Max global gradient norm (VAD: 35)."""
    seed: int = 0
    """Seeds model init, dropout and the data order (epoch e shuffles with seed and e)."""
    device: str = "cpu"
    """torch device: cpu, or cuda (data-parallel processes each take their own GPU)."""
    resume: bool = False
    """Continue the run dir after its last finished epoch."""
    max_samples: int | None = None
    """Use only the first N samples of the split (quick runs)."""
    split: str = "train"
    """Index split to train on."""
    dataroot: Path | None = None
    """Override the dataroot stored in the index."""
    num_workers: int | None = None
    """DataLoader processes per training process, decoding the camera images beside the training step; by
    default (None) the spare cores: min(4, CPUs per training process - 1), 0 on a 1-core machine. Torch's
    threads make room for them (`compute_threads`)."""
    workers: int = 1
    """Data-parallel training processes (one per GPU, or CPU processes); each takes batch_size / workers."""
    log_every: int = 1
    """Write a step line to metrics.jsonl every N steps."""
    checkpoint_every: int = 1
    """Save a checkpoint every N epochs (the last epoch always); resume restarts after the latest one."""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"TrainConfig.recipe {self.recipe!r} is not one of {', '.join(RECIPES)}")
        for name in ("epochs", "batch_size", "log_every", "checkpoint_every", "workers", "accumulate"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "num_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"TrainConfig.max_samples must be >= 1, got {self.max_samples!r}")
        for name in ("backbone_lr_mult", "warmup_ratio", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"TrainConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not self.grad_clip > 0:
            raise ConfigError(f"TrainConfig.grad_clip must be > 0, got {self.grad_clip!r}")
        if self.batch_size % (self.workers * self.accumulate):
            raise ConfigError(
                f"TrainConfig.batch_size {self.batch_size} does not divide into workers={self.workers} x "
                f"accumulate={self.accumulate} micro-batches: give a global batch that is a multiple of "
                f"{self.workers * self.accumulate}"
            )
        if self.schedule not in ("step", "epoch"):
            raise ConfigError(f"TrainConfig.schedule must be 'step' or 'epoch', got {self.schedule!r}")

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        paths = {"index", "out", "dataroot"}
        d = {k: Path(v) if k in paths and v is not None else v for k, v in d.items()}
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# Fields a resumed run must share with the run it continues (epochs and resume may change).
_RESUME_FIXED = (
    "recipe",
    "batch_size",
    "lr",
    "backbone_lr_mult",
    "weight_decay",
    "betas",
    "warmup_steps",
    "warmup_ratio",
    "min_lr_ratio",
    "schedule",
    "accumulate",
    "seed",
    "max_samples",
    "split",
)


@dataclass
class TrainHooks:
    """Plug-in points for a later stage (the NetRoller fine-tune)."""

    modules: dict[str, nn.Module] = field(default_factory=dict)
    """Extra trainable modules (e.g. the adapter); checkpointed under 'hook.<name>.'."""
    shift: Callable[[Batch, dict[str, nn.Module]], BevShift | None] | None = None
    """Builds the BevShift for a batch from the extra modules (None: plain VAD)."""
    dataset: Dataset | None = None
    """Replaces the index dataset (e.g. one that adds cached latents); must yield what `collate` takes."""
    collate: Callable[[list], Batch] = collate
    """Collate function of that dataset."""
    prepare: Callable[[VAD], None] | None = None
    """Called on the freshly built VAD before the optimizer exists (e.g. load a baseline, freeze it)."""
    freeze_model: bool = False
    """Keep the VAD fixed (no gradients, eval mode: BatchNorm statistics and dropout frozen too)."""
    describe: dict = field(default_factory=dict)
    """Extra run facts logged once at the start of metrics.jsonl (e.g. samples without latents)."""


def build_optimizer(model: VAD, extra: dict[str, nn.Module], cfg: TrainConfig) -> torch.optim.Optimizer:
    # Frozen parameters (--freeze-sm) stay out of the optimizer: no weight decay drifts them.
    backbone = [p for p in model.backbone_parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids and p.requires_grad]
    rest += [p for m in extra.values() for p in m.parameters() if p.requires_grad]
    groups = [
        {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult},
        {"params": rest, "lr": cfg.lr},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The learning-rate factor of optimizer step `step` (0-based) of `total`: linear warm-up, then cosine
    decay to `min_lr_ratio`, per step or per epoch (`cfg.schedule`)."""
    if cfg.schedule == "epoch":
        return _epoch_lr_factor(step, cfg, steps_per_epoch)
    if step < cfg.warmup_steps:
        return cfg.warmup_ratio + (1 - cfg.warmup_ratio) * step / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _epoch_lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """mmcv's CosineAnnealingLrUpdaterHook(by_epoch, warmup="linear", warmup_by_epoch) under its gradient-
    cumulative optimizer hook: the cosine value of the step's epoch e (0-based) of E, min + (1 - min) *
    (1 + cos(pi e / E)) / 2, scaled during the warm-up by 1 - (1 - i / W) (1 - warmup_ratio), where i counts
    micro-batches (the lr is set before each one, and a step uses the one set at its last micro-batch) and
    W is warmup_steps micro-batch groups."""
    epoch = step // steps_per_epoch
    regular = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    n = cfg.accumulate
    micro, warm = step * n + n - 1, cfg.warmup_steps * n
    if micro < warm:
        return regular * (1 - (1 - micro / warm) * (1 - cfg.warmup_ratio))
    return regular


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_loader_workers(processes: int = 1) -> int:
    """DataLoader processes per training process when not given: the cores of this process's share of the
    machine beside the one it trains on, at most 4 (`processes`: training processes on this machine)."""
    return max(0, min(4, _cpus() // max(1, processes) - 1))


def loader_workers(cfg: TrainConfig, processes: int = 1) -> int:
    return cfg.num_workers if cfg.num_workers is not None else default_loader_workers(processes)


def compute_threads(threads: int, loaders: int, processes: int = 1) -> int:
    """Torch threads for a training process with `loaders` DataLoader processes: `threads`, fewer where
    they and the loaders would not fit the process's share of the cores. OpenMP threads that share a core
    with a loader process spin against it: measured on 2 loaded cores, 1 loader beside 2 threads trained
    1.2-5.5x slower than 1 loader beside 1 thread (README, Benchmarks)."""
    return max(1, min(threads, _cpus() // max(1, processes) - loaders))


def epoch_loader(
    dataset: Dataset, cfg: TrainConfig, epoch: int, collate_fn: Callable, group: WorkerGroup | None = None
) -> tuple[DataLoader, list[float], list[int]]:
    """This process's micro-batches of the epoch, in order (`accumulate` per optimizer step), the loss weight
    of each (0 for a padding sample where a short last batch has fewer samples than micro-batches), and the
    global batches' sizes. The global batches, of `batch_size` in an order that depends only on (seed,
    epoch) (what makes resume exact), are the same for every worker count and accumulation."""
    batches = global_batches(len(dataset), cfg.batch_size, cfg.seed, epoch)
    rank, world = (group.rank, group.size) if group is not None else (0, 1)
    n = cfg.accumulate
    shares = [rank_share(b, m * world + rank, world * n) for b in batches for m in range(n)]
    loader = DataLoader(
        dataset,
        batch_sampler=[s for s, _ in shares],
        collate_fn=collate_fn,
        num_workers=loader_workers(cfg, group.local_size if group is not None else 1),
        # Loader workers' base seed from the epoch's generator, not the global stream dropout draws from.
        generator=epoch_generator(cfg.seed, epoch),
    )
    return loader, [w for _, w in shares], [len(b) for b in batches]


def train_step(
    model: VAD,
    batches: Sequence[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    hooks: TrainHooks,
    group: WorkerGroup | None = None,
    weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """One optimizer step over this worker's micro-batches (`accumulate` of them, or one); returns the
    losses as floats plus the gradient norm.

    Each micro-batch's loss is its share of the global batch's (weight 0: a padding sample): its sums
    divided by the counts of the whole step, over every micro-batch and worker. With several micro-batches
    those counts come from a forward pass without gradients first, each micro-batch's random state replayed
    for its second pass, so the step is the one a single pass over the whole batch takes. With a
    data-parallel `group`, gradients are summed over the workers before clipping, and the losses returned
    are the global batch's, the same on every worker.
    """
    weights = [1.0] * len(batches) if weights is None else list(weights)
    sum_floats = group.sum_floats if group is not None else None

    def terms_of(batch: Batch) -> dict:
        shift = hooks.shift(batch, hooks.modules) if hooks.shift is not None else None
        return vad_losses(
            model.forward_train(batch.inputs.frame, batch.inputs.history, shift), batch.targets, model.cfg
        )

    optimizer.zero_grad(set_to_none=True)
    if len(batches) == 1:
        loss, result = global_loss(terms_of(batches[0]), sum_floats, weights[0])
        loss.backward()
    else:
        states, counts = [], {}
        with torch.no_grad():
            for batch, w in zip(batches, weights, strict=True):
                states.append(_rng_state(batch))
                for name, c in term_counts(terms_of(batch), w).items():
                    counts[name] = counts.get(name, 0.0) + c
        counts = sum_floats(counts) if sum_floats is not None else counts
        result = {}
        for batch, w, state in zip(batches, weights, states, strict=True):
            _set_rng_state(state)
            loss, shares = loss_shares(terms_of(batch), counts, w)
            loss.backward()
            result = {k: result.get(k, 0.0) + v for k, v in shares.items()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if group is not None:
        group.sum_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    if group is not None:
        result = group.sum_floats(result)
    result["grad_norm"] = float(grad_norm)
    return result


def _rng_state(batch: Batch) -> tuple:
    """The random state a forward pass draws from (dropout): the CPU's and, on a GPU, the device's."""
    cuda = torch.cuda.get_rng_state() if batch.inputs.frame.images.is_cuda else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def _check_resume(run: Path, cfg: TrainConfig) -> None:
    saved = TrainConfig.from_json(json.loads((run / "train_config.json").read_text()))
    for name in _RESUME_FIXED:
        if getattr(saved, name) != getattr(cfg, name):
            raise ConfigError(
                f"--resume: {run} was trained with {name}={getattr(saved, name)!r}, not {getattr(cfg, name)!r}"
            )


def build_dataset(cfg: TrainConfig, vad_cfg: VADConfig, index: Index | None = None) -> SampleDataset:
    """The split's samples; those with unreadable camera images are left out, with one line on stderr.

    `index`: the already loaded `cfg.index`, where the caller has it (saves reading it again)."""
    index = index if index is not None else read_index(cfg.index)
    dataset = SampleDataset(
        index,
        cfg.split,
        vad=vad_cfg,
        train=True,
        dataroot=cfg.dataroot,
        max_samples=cfg.max_samples,
        seed=cfg.seed,
    )
    if note := dataset.unreadable_note():
        print(f"train: {note}", file=sys.stderr, flush=True)
    return dataset


def train(cfg: TrainConfig, hooks: TrainHooks | None = None) -> Path:
    """Train (or resume) a VAD run; returns the run dir.

    With `cfg.workers` > 1 this spawns the workers, each running this function (`netroller.distributed.ddp`).
    Hooks cannot travel to other processes (they hold closures), so a stage that builds hooks is launched
    whole instead: `run_stage(finetune, (cfg, nr), workers=...)`, as `netroller train --num-workers` does.
    Started by a launcher (torchrun: RANK, WORLD_SIZE, ...), this process joins the launcher's group and
    trains as its rank, `cfg.workers` left at 1 (it becomes the world size).
    """
    group = current_group()
    if group is None and (cfg.workers > 1 or Launched.from_env() is not None):
        return _train_in_group(cfg, hooks)
    if group is not None and group.size != cfg.workers:
        raise ConfigError(f"TrainConfig.workers is {cfg.workers}, but {group.size} worker processes run it")
    main = group is None or group.is_main
    hooks = hooks or TrainHooks()
    run = Path(cfg.out)
    ckpt_dir = run / "checkpoints"
    has_ckpt = (ckpt_dir / "last.pt").exists()
    if has_ckpt and not cfg.resume:
        raise ConfigError(
            f"run dir {run} already has checkpoints; pass --resume to continue it or choose another --out"
        )
    if cfg.resume and has_ckpt:
        _check_resume(run, cfg)
    vad_cfg = recipe(cfg.recipe)
    device = group.device if group is not None else torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = VAD(vad_cfg)
    if hooks.prepare is not None:
        hooks.prepare(model)
    if hooks.freeze_model:
        model.requires_grad_(False)
    if group is not None:
        for m in (model, *hooks.modules.values()):
            convert_batchnorm(m)
    model = model.to(device)
    for m in hooks.modules.values():
        m.to(device)
    dataset = hooks.dataset if hooks.dataset is not None else build_dataset(cfg, vad_cfg)
    steps_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = build_optimizer(model, hooks.modules, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg, steps_per_epoch)
    )

    start_epoch = 1
    if cfg.resume and has_ckpt:
        state = torch.load(ckpt_dir / "last.pt", weights_only=False, map_location="cpu")
        own, extra = split_weights(load_file(str(ckpt_dir / state["weights"])))
        load_weights(model, own, ckpt_dir)
        for name, m in hooks.modules.items():
            load_weights(m, extra.get(name, {}), ckpt_dir)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"] + 1
        if main:
            trim_metrics(run / "metrics.jsonl", state["epoch"])
    elif main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").unlink(missing_ok=True)
    if group is not None:
        group.broadcast_state([model, *hooks.modules.values()])
    log = None
    if main:
        write_json_atomic(run / "train_config.json", cfg.to_json())
        write_json_atomic(run / "model_config.json", config_to_dict(vad_cfg))
        log = MetricsLog(run)
        if hooks.describe and start_epoch == 1:
            log.write({"kind": "run", "epoch": 0, **hooks.describe}, 0)
    processes = group.local_size if group is not None else 1
    threads = torch.get_num_threads()
    torch.set_num_threads(compute_threads(threads, loader_workers(cfg, processes), processes))
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            model.train(not hooks.freeze_model)
            for m in hooks.modules.values():
                m.train()
            sums: dict[str, float] = {}
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)  # the epoch's photometric draws and history queues
            if group is not None:
                # Each rank's own dropout stream, a function of (seed, epoch, rank) only: exact resume.
                torch.manual_seed((cfg.seed * 1_000_003 + epoch) * 1_009 + group.rank)
            loader, weights, sizes = epoch_loader(dataset, cfg, epoch, hooks.collate, group)
            n = cfg.accumulate
            steps = _grouped(iter(loader), n)
            bar = tqdm(
                steps, total=len(sizes), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not main
            )
            t_prev = time.perf_counter()
            for i, micro in enumerate(bar):
                t_batch = time.perf_counter()
                micro = [b.to(device) for b in micro]
                w = weights[i * n : (i + 1) * n]
                result = train_step(model, micro, optimizer, scheduler, cfg, hooks, group, w)
                samples = sizes[i]
                # From the previous step's end: the wait for its batches counts (what loader processes save).
                now = time.perf_counter()
                rate, data_s, t_prev = samples / (now - t_prev), t_batch - t_prev, now
                step = (epoch - 1) * steps_per_epoch + i + 1
                for k, v in result.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{result['total']:.3f}", samples_s=f"{rate:.2f}")
                if log is not None and step % cfg.log_every == 0:
                    lr = optimizer.param_groups[1]["lr"]
                    log.write(
                        {
                            "kind": "step",
                            "epoch": epoch,
                            "step": step,
                            "lr": lr,
                            "samples_per_s": rate,
                            "data_s": data_s,
                            **result,
                        },
                        step,
                    )
            means = {k: v / steps_per_epoch for k, v in sums.items()}
            if log is not None:
                log.write(
                    {"kind": "epoch", "epoch": epoch, "step": epoch * steps_per_epoch, **means},
                    epoch * steps_per_epoch,
                )
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                if group is not None:
                    group.check_in_sync(
                        {"": model, **{f"{HOOK_PREFIX}{n}.": m for n, m in hooks.modules.items()}}
                    )
                if main:
                    save_checkpoint(run, epoch, model, hooks.modules, optimizer, scheduler)
    finally:
        torch.set_num_threads(threads)
        if log is not None:
            log.close()
    return run


def _grouped(batches: Iterator[Batch], n: int) -> Iterator[list[Batch]]:
    """Consecutive groups of n micro-batches: one optimizer step each."""
    while group := list(itertools.islice(batches, n)):
        yield group


def _train_in_group(cfg: TrainConfig, hooks: TrainHooks | None) -> Path:
    """`train` in the process group of a launcher that started this process, or in `cfg.workers` spawned
    processes (without hooks: they hold closures, which do not travel to other processes)."""
    if Launched.from_env() is not None:
        cfg = dataclasses.replace(cfg, workers=world_size(cfg.workers))
        return run_stage(train, (cfg, hooks), workers=cfg.workers, device=cfg.device)
    if hooks is not None:
        raise ConfigError(
            f"TrainConfig.workers={cfg.workers} with TrainHooks: launch the stage that builds the hooks "
            "in every worker with netroller.distributed.ddp.run_stage (as `netroller train --num-workers` does)"
        )
    return launch(train, (cfg,), workers=cfg.workers, device=cfg.device)


def load_run(run: Path, *, device: str = "cpu") -> tuple[VAD, VADConfig, TrainConfig | None]:
    """The trained VAD of a run dir (last checkpoint), in eval mode, with its configs."""
    model, vad_cfg, train_cfg, _ = load_run_with_hooks(run, device=device)
    return model, vad_cfg, train_cfg


def load_run_with_hooks(
    run: Path, *, device: str = "cpu"
) -> tuple[VAD, VADConfig, TrainConfig | None, dict[str, dict]]:
    """`load_run` plus the weights of the run's extra modules (e.g. the adapter), by module name. A run
    imported from a released checkpoint (`netroller vad import`) has no train config: None."""
    run = Path(run)
    if not run.is_dir():
        raise ModelError(f"run dir not found: {run}")
    imported = (run / IMPORT_RECORD).is_file()
    needed = ("model_config.json", "checkpoints/last.safetensors") + (
        () if imported else ("train_config.json",)
    )
    for name in needed:
        if not (run / name).is_file():
            raise ModelError(f"{run}: not a finished training run (no {name})")
    try:
        train_cfg = (
            None if imported else TrainConfig.from_json(json.loads((run / "train_config.json").read_text()))
        )
        vad_cfg = config_from_dict(json.loads((run / "model_config.json").read_text()))
    except (ValueError, TypeError) as err:
        raise ModelError(f"{run}: unreadable config ({err})") from err
    model = VAD(vad_cfg)
    own, hooks = split_weights(load_file(str(run / "checkpoints" / "last.safetensors")))
    load_weights(model, own, run / "checkpoints")
    return model.to(device).eval(), vad_cfg, train_cfg, hooks
