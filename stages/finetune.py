"""The NetRoller fine-tune: a trained VAD + the adapter, reading GM latents from the cache.

    netroller train --index work/index.parquet --cache work/cache --init work/runs/baseline \\
        --mode bias --shift query --out work/runs/bias-query
    netroller train ... --latent-lag 3            # the SM at t gets the GM latents of t-3 (same scene)
    netroller train ... --online --model PATH     # the authors' way: the GM inside the training loop

The GM is never loaded for a cache run. The run dir is a normal training run (see `netroller.stages.train`)
plus `netroller.json`: the adapter settings and the key of the latents it was trained on, so that eval and
resume refuse a cache built differently (naming the field).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from netroller.data.index import read_index
from netroller.data.latents import LAG_POLICIES, QuestionDraw
from netroller.distributed.ddp import current_group
from netroller.errors import ConfigError, ModelError
from netroller.models.adapter import AdapterConfig, AdapterMode, NetRoller, ShiftPlace
from netroller.models.vad.config import recipe
from netroller.models.vad.detector import VAD
from netroller.stages.latents import LatentSetup, feed_latents, open_cache, open_online
from netroller.stages.run_dir import load_weights, split_weights
from netroller.stages.train import (
    TrainConfig,
    TrainHooks,
    build_dataset,
    load_run_with_hooks,
    train,
)
from netroller.storage.atomic import write_json_atomic
from netroller.storage.schema import LATENT_KINDS, LatentKey

NETROLLER_FILE = "netroller.json"


@dataclass(frozen=True, kw_only=True)
class NetRollerConfig:
    """The adapter and where its latents come from (saved as netroller.json in the run dir)."""

    cache: Path | None = None
    """Latent cache written by `harvest` (None only with `online`)."""
    init: Path | None = None
    """Baseline SM to start from: a run dir or a .safetensors file (None: random init, for tests)."""
    mode: AdapterMode = AdapterMode.BIAS
    """bias: 1 roller vector added to every BEV cell; tf: 8 roller tokens the BEV cross-attends to."""
    shift: ShiftPlace = ShiftPlace.QUERY
    """query: shift the BEV queries before the encoder; feature: the BEV features after it."""
    latent_lag: int = 0
    """The SM at sample t gets the GM latents of the keyframe t - lag of the same scene."""
    lag_policy: str = "exact"
    """"exact": the keyframe exactly `latent_lag` earlier; "annotated": the latest DriveLM-annotated keyframe
    at least `latent_lag` earlier in the scene (the authors' `latency_offset` with `text_latest_frame`)."""
    shuffle_latents: bool = False
    """Control: every sample gets another sample's latents (a fixed permutation without fixed points)."""
    freeze_sm: bool = False
    """Train the adapter only."""
    layers_used: str = "all"
    """GM layers fed to the adapter, a subset of the cache's: "all", "-1" (last), "0,15,31"."""
    layer_embedding: bool = True
    """The positional layer embedding (ablation: off)."""
    online: bool = False
    """Run the GM inside the loop (the authors' way) instead of reading the cache."""
    model: str | None = None
    """Online: the GM (None: the embedded tiny GM)."""
    tokens: int = 1
    """Online: T positions per sample."""
    layers: str = "all"
    """Online: GM layers captured."""
    prompt: str | None = None
    """Online: question template (None: the default)."""
    drivelm: Path | None = None
    """Online: per-sample DriveLM questions."""
    dtype: str = "float16"
    """Online: latents are rounded through this dtype, as a harvest with it would store them."""
    prompt_format: str = "auto"
    """Online: chat | alpaca | auto, as `harvest --prompt-format`."""
    latents: str = "generated"
    """Online: generated (greedy) | teacher-forced (the GM reads each sample's DriveLM answer)."""
    questions: str = "one"
    """Online: one | per-category | all, as `harvest --questions`."""
    shuffle_seed: int = 0
    """Seed of the shuffled-latent permutation."""
    warmup_epochs: float = 1.0
    """Linear warm-up length in epochs (the authors: 1); sets TrainConfig.warmup_steps from the data size."""
    init_std: float = 0.02
    """Std of the adapter's learned query, nonsensical token and layer embedding (the authors': 1.0)."""
    zero_init: bool = True
    """The adapter's output projection starts at zero, so a Bias fine-tune starts exactly at the baseline (the
    authors' recipes: off, their Linear's default draw, whose first shift breaks a trained baseline)."""
    skip_damaged: bool = False
    """Cache: check every sample's checksum first and train without the damaged ones (counted), instead of
    stopping at the first; how the cache is read, not a setting of the run (not in netroller.json)."""

    def __post_init__(self) -> None:
        for name, enum in (("mode", AdapterMode), ("shift", ShiftPlace)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                choices = " | ".join(e.value for e in enum)
                raise ConfigError(
                    f"NetRollerConfig.{name} must be {choices}, got {getattr(self, name)!r}"
                ) from None
        for name in ("cache", "init", "drivelm"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.online == (self.cache is not None):
            raise ConfigError(
                "NetRollerConfig: give exactly one of cache (read latents) and online (run the GM)"
            )
        if self.warmup_epochs < 0:
            raise ConfigError(f"NetRollerConfig.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.latent_lag < 0:
            raise ConfigError(f"NetRollerConfig.latent_lag must be >= 0, got {self.latent_lag}")
        if self.lag_policy not in LAG_POLICIES:
            raise ConfigError(
                f"NetRollerConfig.lag_policy must be one of {', '.join(LAG_POLICIES)}, got {self.lag_policy!r}"
            )
        if self.tokens < 1:
            raise ConfigError(f"NetRollerConfig.tokens must be >= 1, got {self.tokens}")
        if self.dtype not in ("float16", "float32", "bfloat16"):
            raise ConfigError(
                f"NetRollerConfig.dtype must be float16, float32 or bfloat16, got {self.dtype!r}"
            )
        if self.latents not in LATENT_KINDS:
            raise ConfigError(
                f"NetRollerConfig.latents must be one of {', '.join(LATENT_KINDS)}, got {self.latents!r}"
            )
        if self.online and self.latents == "teacher-forced" and self.drivelm is None:
            raise ConfigError("teacher-forced latents need the answers of a DriveLM file: give --drivelm")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        del d["skip_damaged"]
        return {
            k: str(v) if isinstance(v, Path) else (v.value if hasattr(v, "value") else v)
            for k, v in d.items()
        }

    @classmethod
    def from_json(cls, d: dict) -> NetRollerConfig:
        return cls(**d)


# The authors' effective batch: 1 sample per GPU x 8 GPUs x 8 accumulation steps (`cumulative_iters = 8`).
AUTHORS_BATCH = 64


def finetune_c1(index: Path, out: Path, **overrides) -> TrainConfig:
    """The training settings all the authors' fine-tunes share (Rex-sys-hk/NetRoller
    `challenge/RollNet/projects/configs/rollnet/rollnet_base_c1.py`): AdamW lr 3.125e-5 (1e-3 x 8 GPUs / 256),
    betas (0.9, 0.95), weight decay 0.02, gradient clip 5, backbone lr x0.1, 5 epochs, mmcv's CosineAnnealing
    per epoch to 1e-6 x lr after a linear warm-up over epoch 1 from 1e-3 x lr (its length comes from
    NetRollerConfig.warmup_epochs). The batch stays `TrainConfig`'s unless given: `authors_recipe` sets the
    authors' effective batch of 64."""
    base = dict(
        index=index,
        out=out,
        epochs=5,
        lr=3.125e-5,
        betas=(0.9, 0.95),
        weight_decay=0.02,
        grad_clip=5.0,
        backbone_lr_mult=0.1,
        schedule="epoch",
        warmup_ratio=1e-3,
        min_lr_ratio=1e-6,
    )
    base.update(overrides)
    return TrainConfig(**base)


@dataclass(frozen=True)
class Finetune:
    """A fine-tune as the authors configured one: the training and the adapter, and the latents it expects."""

    train: TrainConfig
    netroller: NetRollerConfig
    tokens: int
    """T of the latents the config reads (`max_hidden_states_iters`): harvest with --tokens T."""


def c1(index: Path, out: Path, *, cache: Path, init: Path | None, workers: int = 1, **overrides) -> Finetune:
    """`rollnet_base_c1.py`: Bias mode (1 roller), Query Shift of the BEV queries, all 32 GM layers with the
    layer embedding, T=192 (the last prompt token and up to 191 answer tokens), VAD trained too; the adapter's
    query, nonsensical token and layer embedding drawn from N(0, 1) as theirs (nn.Embedding's default), their
    output projection's default draw (`zero_init=False`, where ours starts at zero); the
    effective batch of 64 as `AUTHORS_BATCH / workers` accumulation steps of one sample per worker. Differs
    from theirs: the GM is not trained or run here (its latents come from the cache), fp32 instead of their
    DeepSpeed fp16."""
    if AUTHORS_BATCH % workers:
        raise ConfigError(f"the authors' batch of {AUTHORS_BATCH} does not divide among {workers} workers")
    train = finetune_c1(
        index,
        out,
        batch_size=AUTHORS_BATCH,
        accumulate=AUTHORS_BATCH // workers,
        workers=workers,
        **overrides,
    )
    nr = NetRollerConfig(
        cache=cache,
        init=init,
        mode=AdapterMode.BIAS,
        shift=ShiftPlace.QUERY,
        latent_lag=3,
        lag_policy="annotated",
        init_std=1.0,
        zero_init=False,
    )
    return Finetune(train, nr, tokens=192)


def c2(index: Path, out: Path, *, cache: Path, init: Path | None, workers: int = 1, **overrides) -> Finetune:
    """`rollnet_base_c2.py`: c1 reading the last GM layer only (`last_layer = 1`)."""
    f = c1(index, out, cache=cache, init=init, workers=workers, **overrides)
    return dataclasses.replace(f, netroller=dataclasses.replace(f.netroller, layers_used="-1"))


def c3(index: Path, out: Path, *, cache: Path, init: Path | None, workers: int = 1, **overrides) -> Finetune:
    """`rollnet_base_c3.py`: TF mode (8 rollers the BEV queries cross-attend to), Query Shift, T=1."""
    f = c1(index, out, cache=cache, init=init, workers=workers, **overrides)
    return Finetune(f.train, dataclasses.replace(f.netroller, mode=AdapterMode.TF), tokens=1)


def c4(index: Path, out: Path, *, cache: Path, init: Path | None, workers: int = 1, **overrides) -> Finetune:
    """`rollnet_base_c4.py`: Bias mode shifting the BEV encoder's output (`rolling_query_names = ['bev_emb']`:
    Feature Shift), T=1."""
    f = c1(index, out, cache=cache, init=init, workers=workers, **overrides)
    return Finetune(f.train, dataclasses.replace(f.netroller, shift=ShiftPlace.FEATURE), tokens=1)


def frozen_bias(
    index: Path, out: Path, *, cache: Path, init: Path | None, workers: int = 1, **overrides
) -> Finetune:
    """`rollnet_base_2_25.py`: VAD frozen (`VAD_phase = 'freeze'`), the adapter alone trained; Bias, Query
    Shift, T=1, without the layer embedding."""
    f = c4(index, out, cache=cache, init=init, workers=workers, **overrides)
    nr = dataclasses.replace(f.netroller, shift=ShiftPlace.QUERY, freeze_sm=True, layer_embedding=False)
    return Finetune(f.train, nr, tokens=1)


def frozen_bias_le(
    index: Path, out: Path, *, cache: Path, init: Path | None, workers: int = 1, **overrides
) -> Finetune:
    """`rollnet_base_2_25_1_le.py`: `frozen_bias` with the layer embedding."""
    f = frozen_bias(index, out, cache=cache, init=init, workers=workers, **overrides)
    return dataclasses.replace(f, netroller=dataclasses.replace(f.netroller, layer_embedding=True))


def frozen_tf(
    index: Path, out: Path, *, cache: Path, init: Path | None, workers: int = 1, **overrides
) -> Finetune:
    """`rollnet_base_3_25.py`: VAD frozen; TF mode (8 rollers) on the BEV encoder's output (Feature Shift),
    T=1, without the layer embedding."""
    f = frozen_bias(index, out, cache=cache, init=init, workers=workers, **overrides)
    nr = dataclasses.replace(f.netroller, mode=AdapterMode.TF, shift=ShiftPlace.FEATURE)
    return Finetune(f.train, nr, tokens=1)


AUTHORS_RECIPES = {
    "c1": c1,
    "c2": c2,
    "c3": c3,
    "c4": c4,
    "frozen-bias": frozen_bias,
    "frozen-bias-le": frozen_bias_le,
    "frozen-tf": frozen_tf,
}


def authors_recipe(name: str, index: Path, out: Path, **kw) -> Finetune:
    """The authors' configuration `name` (`AUTHORS_RECIPES`); ConfigError naming the known ones."""
    if name not in AUTHORS_RECIPES:
        raise ConfigError(f"unknown fine-tune recipe {name!r}: one of {', '.join(AUTHORS_RECIPES)}")
    return AUTHORS_RECIPES[name](index, out, **kw)


def open_latents(
    nr: NetRollerConfig, index_path: Path, dataroot: Path | None = None, *, expect: LatentKey | None = None
) -> LatentSetup:
    """The run's latents: its cache, or the GM online; with `expect` (a resumed run's key) they must be the
    latents it was trained on."""
    if not nr.online:
        return open_cache(nr.cache, layers=nr.layers_used, skip_damaged=nr.skip_damaged, expect=expect)
    setup = open_online(
        model=nr.model,
        layers=nr.layers,
        layers_used=nr.layers_used,
        tokens=nr.tokens,
        prompt=nr.prompt,
        drivelm=nr.drivelm,
        dtype=nr.dtype,
        prompt_format=nr.prompt_format,
        latents=nr.latents,
        questions=nr.questions,
        index_path=index_path,
        dataroot=dataroot,
    )
    if expect is not None:
        expect.check(setup.key, where="online GM")
    return setup


def _init_weights(init: Path) -> tuple[dict, Path]:
    path = init / "checkpoints" / "last.safetensors" if init.is_dir() else init
    if not path.is_file():
        raise ModelError(f"--init: no baseline weights at {path} (give a run dir or a .safetensors file)")
    return split_weights(load_file(str(path)))[0], path


def _roller_shift(batch, modules):
    lat = batch.latents
    return modules["netroller"].shift(lat.hidden, lat.length, lat.present)


def netroller_hooks(
    cfg: TrainConfig, nr: NetRollerConfig, setup: LatentSetup
) -> tuple[TrainConfig, TrainHooks, AdapterConfig]:
    """The training hooks of a NetRoller fine-tune: the adapter, a dataset whose batches carry latents
    from `setup.source`, the baseline init; plus the config with its 1-epoch warm-up filled in."""
    vad_cfg = recipe(cfg.recipe)
    init = _init_weights(nr.init) if nr.init is not None else None

    def prepare(model: VAD) -> None:
        if init is not None:
            load_weights(model, init[0], init[1])

    index = read_index(cfg.index)
    base = build_dataset(cfg, vad_cfg, index)
    feed = feed_latents(
        setup,
        base,
        index,
        lag=nr.latent_lag,
        shuffle=nr.shuffle_latents,
        shuffle_seed=nr.shuffle_seed,
        lag_policy=nr.lag_policy,
        # Latents with several questions per sample: one drawn per sample and epoch from the run's seed.
        draw=QuestionDraw("epoch", seed=cfg.seed),
    )
    adapter_cfg = AdapterConfig(
        gm_hidden=setup.hidden_size,
        gm_layers=len(setup.layer_positions),
        out_dim=vad_cfg.embed_dims,
        mode=nr.mode,
        shift=nr.shift,
        layer_embedding=nr.layer_embedding,
        init_std=nr.init_std,
        zero_init=nr.zero_init,
    )
    steps_per_epoch = -(-len(base) // cfg.batch_size)
    cfg = dataclasses.replace(cfg, warmup_steps=round(nr.warmup_epochs * steps_per_epoch))
    hooks = TrainHooks(
        modules={"netroller": NetRoller(adapter_cfg)},
        shift=_roller_shift,
        dataset=feed.dataset,
        collate=feed.collate,
        prepare=prepare,
        freeze_model=nr.freeze_sm,
        describe={
            **feed.counts,
            "samples_unreadable": len(base.unreadable),
            "latent_lag": nr.latent_lag,
            "lag_policy": nr.lag_policy,
            "shuffled": nr.shuffle_latents,
        },
    )
    return cfg, hooks, adapter_cfg


def finetune(cfg: TrainConfig, nr: NetRollerConfig) -> Path:
    """Train VAD + the NetRoller adapter from latents; returns the run dir."""
    run = Path(cfg.out)
    saved = run / NETROLLER_FILE
    previous = json.loads(saved.read_text()) if cfg.resume and saved.is_file() else None
    expect = LatentKey.from_dict(previous["latents_key"]) if previous is not None else None
    setup = open_latents(nr, cfg.index, cfg.dataroot, expect=expect)
    if previous is not None and previous["netroller"] != nr.to_json():
        raise ConfigError(f"--resume: {run} was trained with other NetRoller settings ({saved})")
    cfg, hooks, adapter_cfg = netroller_hooks(cfg, nr, setup)
    group = current_group()
    if group is not None and not group.is_main:  # rank 0 alone speaks and writes the run dir
        return train(cfg, hooks)
    d = hooks.describe
    print(
        f"NetRoller {nr.mode.value}/{nr.shift.value}: {d['samples']} samples, {d['samples_without_latents']} "
        f"without latents ({d['no_earlier_frame_for_lag']} before the lag's first frame, "
        f"{d['failed_in_harvest']} failed in harvest"
        + (f", {d['damaged_left_out']} damaged, left out by --skip-damaged)" if nr.skip_damaged else ")")
    )
    if previous is None:
        run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            saved,
            {
                "netroller": nr.to_json(),
                "adapter": _adapter_json(adapter_cfg),
                "latents_key": setup.key.to_dict(),
            },
        )
    return train(cfg, hooks)


def _adapter_json(cfg: AdapterConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: (v.value if hasattr(v, "value") else v) for k, v in d.items()}


def load_netroller_run(
    run: Path, *, device: str = "cpu"
) -> tuple[VAD, NetRoller | None, dict | None, object, object]:
    """(VAD, NetRoller or None, netroller.json or None, VADConfig, TrainConfig) of a finished run."""
    model, vad_cfg, train_cfg, hooks = load_run_with_hooks(run, device=device)
    saved = Path(run) / NETROLLER_FILE
    if not saved.is_file():
        return model, None, None, vad_cfg, train_cfg
    meta = json.loads(saved.read_text())
    adapter_cfg = AdapterConfig(**meta["adapter"])
    roller = NetRoller(adapter_cfg)
    load_weights(roller, hooks.get("netroller", {}), Path(run))
    return model, roller.to(device).eval(), meta, vad_cfg, train_cfg
