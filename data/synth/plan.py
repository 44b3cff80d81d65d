"""Which scenes a config produces: v1.0-mini scene names and splits, their map locations, logs and scripts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from nuscenes.utils.splits import create_splits_scenes

from netroller.data.synth.config import SceneScript, SynthConfig
from netroller.data.synth.tokens import stream

# Locations of the real v1.0-mini scenes.
MINI_LOCATIONS = {
    "scene-0061": "singapore-onenorth",
    "scene-0103": "boston-seaport",
    "scene-0553": "boston-seaport",
    "scene-0655": "boston-seaport",
    "scene-0757": "boston-seaport",
    "scene-0796": "singapore-queenstown",
    "scene-0916": "singapore-queenstown",
    "scene-1077": "singapore-hollandvillage",
    "scene-1094": "singapore-hollandvillage",
    "scene-1100": "singapore-hollandvillage",
}
RIGHT_HAND = {"boston-seaport": True}  # Singapore keeps left
VEHICLE = {"boston-seaport": ("n008", -4)}  # (vehicle, UTC offset in hours); Singapore: n015, +8


@dataclass(frozen=True)
class ScenePlan:
    index: int
    name: str
    split: str  # "mini_train" | "mini_val"
    location: str
    script: SceneScript
    vehicle: str
    logfile: str
    date_captured: str
    start_us: int  # timestamp of the first keyframe


def mini_scene_names(n: int) -> list[tuple[str, str]]:
    """(name, split) of `n` scenes: mini_val gets one scene from 2 scenes on and both at 10."""
    splits = create_splits_scenes()
    train, val = list(splits["mini_train"]), list(splits["mini_val"])
    n_val = 0 if n == 1 else (2 if n >= len(train) + 2 else 1)
    chosen = [(s, "mini_train") for s in train[: n - n_val]] + [(s, "mini_val") for s in val[:n_val]]
    return sorted(chosen)


# Bump when `default_scripts` draws other scripts (`make pipeline` regenerates the data then). 2: val scenes
# drawn within the training scenes' manoeuvres and speeds.
SCRIPTS_VERSION = 2
MIN_TRAIN_SCENES = 6  # 2 per manoeuvre: fewer training scenes leave the val scenes as drawn


def default_scripts(splits: list[str], seed: int) -> tuple[SceneScript, ...]:
    """Scripts drawn from the seed, one per scene of `splits` ("mini_train" | "mini_val", in scene order):
    straight, left and right all occur once there are 3 scenes.

    A val scene is drawn within what the training scenes show (`_within_training`): nuScenes' val is drawn
    from the distribution train is, while 8 training scenes drawn at random would often leave a val scene
    outside them (a turn slower than every training turn), and a val figure would then measure
    extrapolation from a handful of scenes rather than what a model read from its inputs."""
    rng = stream(seed, "scripts")
    n = len(splits)
    manoeuvres = [("straight", "left", "right")[i % 3] for i in range(n)]
    order = rng.permutation(n)
    out = []
    for i in order:
        m = manoeuvres[int(i)]
        speed = rng.uniform(6.0, 11.0) if m == "straight" else rng.uniform(5.0, 8.5)
        out.append(SceneScript(manoeuvre=m, speed=round(float(speed), 1)))  # type: ignore[arg-type]
    return _within_training(tuple(out), splits, stream(seed, "val-scripts"))


def _within_training(
    scripts: tuple[SceneScript, ...], splits: list[str], rng: np.random.Generator
) -> tuple[SceneScript, ...]:
    """Each val scene keeps its manoeuvre where at least 2 training scenes have it (else takes the most
    common training manoeuvre) and gets a speed drawn between those scenes' slowest and fastest. With fewer
    than 2 training scenes per manoeuvre (`MIN_TRAIN_SCENES`: too few to have a range) the scripts stay as
    drawn."""
    if sum(split == "mini_train" for split in splits) < MIN_TRAIN_SCENES:
        return scripts
    train: dict[str, list[float]] = {}
    for script, split in zip(scripts, splits, strict=True):
        if split == "mini_train":
            train.setdefault(script.manoeuvre, []).append(script.speed)
    shown = {m: v for m, v in train.items() if len(v) >= 2}
    if not shown:
        return scripts
    common = max(sorted(shown), key=lambda m: len(shown[m]))
    out = []
    for script, split in zip(scripts, splits, strict=True):
        if split == "mini_val":
            m = script.manoeuvre if script.manoeuvre in shown else common
            speed = rng.uniform(min(shown[m]), max(shown[m]))
            script = SceneScript(manoeuvre=m, speed=round(float(speed), 1))  # type: ignore[arg-type]
        out.append(script)
    return tuple(out)


def plan_scenes(cfg: SynthConfig) -> list[ScenePlan]:
    names = mini_scene_names(cfg.scenes)
    scripts = (
        cfg.scripts if cfg.scripts is not None else default_scripts([split for _, split in names], cfg.seed)
    )
    rng = stream(cfg.seed, "logs")
    plans = []
    day0 = dt.datetime(2018, 7, 23, 8, 0, 0)
    for i, ((name, split), script) in enumerate(zip(names, scripts, strict=True)):
        location = MINI_LOCATIONS[name]
        vehicle, utc = VEHICLE.get(location, ("n015", 8))
        local = day0 + dt.timedelta(days=int(rng.integers(0, 40)), seconds=int(rng.integers(0, 10 * 3600)))
        utc_time = local - dt.timedelta(hours=utc)
        epoch = dt.datetime(1970, 1, 1)
        start_us = int((utc_time - epoch).total_seconds()) * 1_000_000 + int(rng.integers(0, 1_000_000))
        logfile = f"{vehicle}-{local:%Y-%m-%d-%H-%M-%S}{utc:+03d}00"
        plans.append(
            ScenePlan(i, name, split, location, script, vehicle, logfile, f"{local:%Y-%m-%d}", start_us)
        )
    return plans


def location_rng(seed: int, location: str) -> np.random.Generator:
    return stream(seed, "world/" + location)
