"""Typed configuration of the synthetic nuScenes generator: what the ego does per scene, and the dataset size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from netroller.errors import ConfigError

Manoeuvre = Literal["straight", "left", "right"]

MAX_SCENES = 10  # v1.0-mini has ten scene names
MAX_SAMPLES_PER_SCENE = 100
MAX_STRAIGHT_SPEED = 20.0
TURN_SPEED_RANGE = (4.0, 12.0)  # below 4 m/s the turn does not reach 2 m lateral within 3 s


@dataclass(frozen=True, kw_only=True)
class SceneScript:
    """What the ego does in one scene."""

    manoeuvre: Manoeuvre
    """"straight": one straight lane the whole scene; "left" / "right": a turn at an intersection inside the scene."""
    speed: float
    """Constant ego speed in m/s."""

    def __post_init__(self) -> None:
        if self.manoeuvre not in get_args(Manoeuvre):
            raise ConfigError(
                f"SceneScript.manoeuvre must be one of {get_args(Manoeuvre)}, got {self.manoeuvre!r}"
            )
        if not isinstance(self.speed, int | float) or not math.isfinite(self.speed):
            raise ConfigError(f"SceneScript.speed must be a finite number of m/s, got {self.speed!r}")
        if self.manoeuvre == "straight":
            if not 0.0 < self.speed <= MAX_STRAIGHT_SPEED:
                raise ConfigError(
                    f"SceneScript.speed must be in (0, {MAX_STRAIGHT_SPEED}] m/s for a straight scene, got {self.speed}"
                )
        else:
            lo, hi = TURN_SPEED_RANGE
            if not lo <= self.speed <= hi:
                raise ConfigError(
                    f"SceneScript.speed must be in [{lo}, {hi}] m/s for a {self.manoeuvre} turn, got {self.speed}"
                )


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """Size, seed and output folder of one synthetic nuScenes v1.0-mini dataset."""

    out: Path
    """Dataset root to create (the devkit's `dataroot`). Refused if it exists and is not empty, unless `overwrite`."""
    scenes: int = 10
    """Number of scenes, 1..10; named after v1.0-mini's scenes, mini_train and mini_val both used from 2 on."""
    samples_per_scene: int = 40
    """Keyframes per scene, at 2 Hz."""
    seed: int = 0
    """Everything (tokens, world, agents, scripts) follows from this seed; same config, byte-identical output."""
    image_width: int = 480
    """Camera image width in pixels (nuScenes' 1600 x 900, intrinsics scaled to match)."""
    image_height: int = 270
    """Camera image height in pixels."""
    scripts: tuple[SceneScript, ...] | None = None
    """One script per scene; None: drawn from the seed so that straight, left and right all occur."""
    overwrite: bool = False
    """Replace an existing non-empty `out`."""

    def __post_init__(self) -> None:
        if not isinstance(self.out, str | Path) or str(self.out) == "":
            raise ConfigError(f"SynthConfig.out must be a path, got {self.out!r}")
        object.__setattr__(self, "out", Path(self.out))
        _check_int("scenes", self.scenes, 1, MAX_SCENES)
        _check_int("samples_per_scene", self.samples_per_scene, 2, MAX_SAMPLES_PER_SCENE)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("image_width", self.image_width, 64, 3200)
        _check_int("image_height", self.image_height, 36, 1800)
        if self.scripts is not None:
            scripts = tuple(self.scripts)
            if len(scripts) != self.scenes:
                raise ConfigError(
                    f"SynthConfig.scripts must hold one SceneScript per scene ({self.scenes}), got {len(scripts)}"
                )
            for s in scripts:
                if not isinstance(s, SceneScript):
                    raise ConfigError(f"SynthConfig.scripts must hold SceneScript values, got {s!r}")
            object.__setattr__(self, "scripts", scripts)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"SynthConfig.{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"SynthConfig.{name} must be in [{lo}, {hi}], got {value}")
