"""The end-to-end recipe `make pipeline` runs: one typed config, named variants as Python functions.

embedded()  the default: synthetic nuScenes (10 scenes x 40 keyframes), the tiny random-weight GM,
            the debug VAD (16 epochs), NetRoller Bias + Query Shift and TF + Query Shift trained at the authors' lag
            (3 keyframes, the latest DriveLM-annotated one), the shuffled-latent control and a lag sweep
            (0, 1, 3, 6) from one harvest; the first variant again on the latents of the tiny LLaMA-Adapter
            V2 (the second GM backend); then the positive control
            (`PositiveControl`): latents teacher-forced on the ground-truth future, its fine-tune, its
            shuffled control and lags.
smoke()     the same flow at toy size, for tests (about a minute).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from netroller.errors import ConfigError
from netroller.models.adapter import AdapterMode, ShiftPlace


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One NetRoller fine-tune of the baseline."""

    name: str  # run folder name under work/runs/
    mode: AdapterMode
    shift: ShiftPlace


@dataclass(frozen=True, kw_only=True)
class PositiveControl:
    """A fine-tune on privileged latents, to show that information flows GM -> cache -> adapter -> plan.

    The GM is teacher-forced on the synthetic DriveLM answer that states the ego's ground-truth future
    (`netroller.data.synth.drivelm.FUTURE_QUESTION`), in training and in eval, so the adapter reads the
    answer to the planning task: the row must beat the baseline, its shuffled control must lose the gain, and
    longer lags must lose more of it. A check of the pipeline, not a result."""

    name: str = "privileged-bias-query"
    """Run folder name under work/runs/."""
    mode: AdapterMode = AdapterMode.BIAS
    shift: ShiftPlace = ShiftPlace.QUERY
    tokens: int = 23
    """T of the privileged harvest: the last prompt token and the answer's first 22 tokens, which hold the
    3 s position and side (`netroller.data.synth.drivelm._future_answer`) and, for most answers, not yet the
    speed."""
    layers: str = "all"
    """GM layers of the privileged harvest."""
    epochs: int = 5
    """Epochs of its fine-tune."""
    lr: float = 3.125e-5
    """Peak learning rate of its fine-tune: the variants' (the authors' c1). Measured (README, positive
    control): at 2e-4 the fine-tune itself moved the SM more than the latents did."""
    lags: tuple[int, ...] = (1, 3, 6)
    """Latent lags evaluated besides lag 0 and the shuffled control."""

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.epochs < 1:
            raise ConfigError(
                f"PositiveControl.tokens and .epochs must be >= 1, got {self.tokens} and {self.epochs}"
            )
        if any(lag < 1 for lag in self.lags):
            raise ConfigError(
                f"PositiveControl.lags must be >= 1 (lag 0 is always evaluated), got {self.lags}"
            )


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    work: Path = Path("work")
    """Everything the pipeline writes goes here (git-ignored)."""
    dataroot: Path | None = None
    """A real nuScenes root to use instead of generating the synthetic set (then `version` applies)."""
    version: str = "v1.0-mini"
    """nuScenes version of `dataroot`."""
    drivelm: Path | None = None
    """DriveLM QA file the GM is asked from, for a real `dataroot` (the synthetic set writes its own)."""
    scenes: int = 10
    """Synthetic set: scenes (the devkit's mini_train + mini_val names)."""
    samples_per_scene: int = 40
    """Synthetic set: keyframes per scene (2 Hz)."""
    seed: int = 0
    """Seed of the synthetic world and of training."""
    gm: str | None = None
    """GM path or hub id; None builds the embedded tiny random-weight GM into work/gm/tiny."""
    tokens: int = 4
    """T: GM positions harvested per sample (early stopping at EOS)."""
    layers: str = "all"
    """GM layers harvested."""
    harvest_workers: int = 1
    """Ray actors for the harvest (0: in-process)."""
    shard_size: int = 16
    """Samples per cache shard."""
    recipe: str = "debug"
    """VAD recipe."""
    batch_size: int = 2
    """Samples per training step."""
    baseline_epochs: int = 16
    """Epochs of the baseline VAD (measured: 6 left its val L2 avg at 1.363 m, worse than the planner without
    a model, 1.243; 16 reach 0.609)."""
    baseline_lr: float = 5e-4
    """Peak learning rate of the baseline."""
    finetune_epochs: int = 5
    """Epochs of each NetRoller fine-tune (the authors: 5)."""
    finetune_lr: float = 3.125e-5
    """Peak learning rate of the fine-tunes (the authors' c1: 1e-3 x 8 / 256)."""
    variants: tuple[Variant, ...] = field(
        default_factory=lambda: (
            Variant(name="bias-query", mode=AdapterMode.BIAS, shift=ShiftPlace.QUERY),
            Variant(name="tf-query", mode=AdapterMode.TF, shift=ShiftPlace.QUERY),
        )
    )
    """NetRoller fine-tunes of the baseline."""
    latent_lag: int = 3
    """The lag the fine-tunes train at and are evaluated at first (the authors' `latency_offset = 3`)."""
    lag_policy: str = "annotated"
    """How that lag picks the GM's frame: the latest DriveLM-annotated keyframe at least `latent_lag`
    earlier (the authors' `text_latest_frame`), or "exact"."""
    lags: tuple[int, ...] = (0, 1, 3, 6)
    """Latent lags evaluated on the first variant (from the same cache, with `lag_policy`)."""
    shuffled_control: bool = True
    """Evaluate the first variant with shuffled latents too."""
    eval_max_samples: int | None = None
    """Evaluate only the first N val samples (None: all)."""
    second_backend: bool = True
    """Also harvest with the embedded tiny LLaMA-Adapter V2 (the paper's GM's files and architecture, random
    weights) and fine-tune the first variant on its cache: the second GM backend, end to end."""
    positive_control: PositiveControl | None = field(default_factory=PositiveControl)
    """The privileged-latent check; None skips it, and so does a real `dataroot` (it needs the synthetic
    DriveLM answers that state the ego's future)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "work", Path(self.work))
        for name in ("scenes", "samples_per_scene", "tokens", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PipelineConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("baseline_epochs", "finetune_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PipelineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.harvest_workers < 0:
            raise ConfigError(f"PipelineConfig.harvest_workers must be >= 0, got {self.harvest_workers}")
        if not self.variants:
            raise ConfigError("PipelineConfig.variants must name at least one NetRoller fine-tune")
        if any(lag < 0 for lag in self.lags):
            raise ConfigError(f"PipelineConfig.lags must be >= 0, got {self.lags}")
        if self.dataroot is not None and self.drivelm is None and self.lag_policy == "annotated":
            raise ConfigError(
                "PipelineConfig.lag_policy 'annotated' needs the DriveLM file of the real dataroot (drivelm): "
                "without it no frame is annotated"
            )
        if self.latent_lag < 0 or self.lag_policy not in ("exact", "annotated"):
            raise ConfigError(
                f"PipelineConfig.latent_lag must be >= 0 and lag_policy exact or annotated, got "
                f"{self.latent_lag} and {self.lag_policy!r}"
            )
        names = [v.name for v in self.variants]
        if self.positive_control is not None:
            names.append(self.positive_control.name)
        if len(set(names)) != len(names) or "baseline" in names:
            raise ConfigError(
                f"PipelineConfig.variants need distinct names other than 'baseline', got {names}"
            )


def embedded(work: Path = Path("work")) -> PipelineConfig:
    """The default flow on the embedded synthetic data and random-weight GM."""
    return PipelineConfig(work=work)


def smoke(work: Path = Path("work")) -> PipelineConfig:
    """The same flow at toy size (tests): 2 scenes x 8 keyframes, 1 epoch each, trained at lag 1, evaluated
    at lags 1 and 0; the positive control at T=4, 1 epoch, lag 1."""
    return dataclasses.replace(
        embedded(work),
        scenes=2,
        samples_per_scene=8,
        tokens=2,
        harvest_workers=0,
        shard_size=4,
        baseline_epochs=1,
        finetune_epochs=1,
        latent_lag=1,
        lags=(0, 1),
        positive_control=PositiveControl(tokens=4, epochs=1, lags=(1,)),
    )


RECIPES = {"embedded": embedded, "smoke": smoke}
