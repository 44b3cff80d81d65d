"""One scene's motion: the `Agent` and `Scenario` types, and the ego's route through the world.

The ego drives its route at constant speed: one straight lane, or a straight approach, a quarter-circle turn
through a junction and a straight departure. `traffic.py` places the agents around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from netroller.data.synth.catalog import ObjectClass
from netroller.data.synth.config import SceneScript
from netroller.data.synth.geometry import Arc, Line, Path
from netroller.data.synth.world import (
    HALF_JUNCTION,
    HEADINGS,
    LANE_WIDTH,
    LANES_PER_DIR,
    UNIT,
    World,
)
from netroller.errors import ConfigError

KEYFRAME_DT = 0.5  # seconds, 2 Hz
ANNOTATION_RANGE = 60.0  # metres from the ego within which objects are annotated
TURN_LATERAL = 2.5  # metres of lateral displacement a turn reaches within 3 s at some keyframe
EGO_SIZE = (1.85, 4.084, 1.56)  # Renault Zoe, nuScenes' ego vehicle
EGO_CENTRE_AHEAD = 1.4  # the box centre lies ahead of the ego frame's origin (rear axle)
SIM_DT = 0.25  # time step of the collision check

Role = Literal["parked", "driving", "riding", "walking", "standing", "crossing", "construction"]


@dataclass
class Agent:
    """An object moving along `path` at `speed` from arc length `s0` (speed 0: stationary)."""

    cls: ObjectClass
    size: tuple[float, float, float]
    path: Path
    s0: float
    speed: float
    attribute: str | None
    role: Role

    def poses(self, t: np.ndarray) -> np.ndarray:
        """(n, 3) x, y, yaw of the box centre at times `t`."""
        return self.path.poses(self.s0 + self.speed * np.asarray(t, dtype=float))


@dataclass
class Scenario:
    """Everything that moves in one scene."""

    script: SceneScript
    duration: float  # seconds from the first to the last keyframe
    ego_path: Path
    ego_s0: float
    turn_time: float | None  # when the ego enters the junction arc (turn scenes)
    agents: list[Agent]

    def ego_poses(self, t) -> np.ndarray:
        """(n, 3) x, y, yaw of the ego frame (rear axle, on the ground) at times `t`."""
        return self.ego_path.poses(self.ego_s0 + self.script.speed * np.asarray(t, dtype=float))


APPROACH_MARGIN = 30.0  # metres of road kept before the ego's start
DEPART_MARGIN = 40.0  # and after its end


def turn_timing(speed: float, duration: float, radius: float) -> tuple[float, float, float]:
    """(time the ego enters the turn arc, approach length, length driven after the arc).

    The turn starts 40% into the scene, or earlier where needed so that the keyframe 3 s before the scene's
    end still sees the ego `TURN_LATERAL` metres to the side 3 s later.
    """
    s_need = radius * math.acos(1.0 - TURN_LATERAL / radius)
    t_turn = float(np.clip(min(0.4 * duration, duration - (s_need + 1.0) / speed - 0.5), 0.0, duration))
    approach = speed * t_turn
    return t_turn, approach, speed * duration - approach - radius * math.pi / 2.0


def required_junctions(speed: float, duration: float, manoeuvre: str, extension: float, block: float) -> int:
    """Junctions per side the grid needs so that the ego's route fits with margins (mirrors `plan_ego`)."""
    if manoeuvre == "straight":
        need = speed * duration + APPROACH_MARGIN + DEPART_MARGIN - 2 * extension
    else:
        # Widest turn (across oncoming traffic); best case the junction is the last one on the approach road
        # and the first on the departing road.
        _, approach, depart = turn_timing(speed, duration, HALF_JUNCTION + LANE_WIDTH / 2)
        need = max(approach + APPROACH_MARGIN, depart + DEPART_MARGIN) + HALF_JUNCTION - extension
    n = 3
    while (n - 1) * block < need:
        n += 1
    return n


def _full_lane_line(world: World, d: int, road_coord: float, k: int) -> Line:
    """The lane `k` of direction `d` on the road at `road_coord`, from world edge to world edge."""
    x0, y0, x1, y1 = world.bounds
    positive = d in (0, 1)
    lat = world.lane_lateral(positive, k)
    if d in (0, 2):  # horizontal road at y = road_coord
        y = road_coord + lat
        start = (x0, y) if positive else (x1, y)
        return Line(start, HEADINGS[d], x1 - x0)
    x = road_coord - lat
    start = (x, y0) if positive else (x, y1)
    return Line(start, HEADINGS[d], y1 - y0)


def plan_ego(
    world: World, script: SceneScript, duration: float, rng: np.random.Generator
) -> tuple[Path, float, float | None]:
    """The ego's path, its arc length at t = 0, and the time it enters the turn (None when straight)."""
    v = script.speed
    travel = v * duration
    if script.manoeuvre == "straight":
        options = []
        for d in range(4):
            coords = world.ys if d in (0, 2) else world.xs
            for c in coords:
                for k in range(LANES_PER_DIR):
                    options.append(_full_lane_line(world, d, c, k))
        line = options[int(rng.integers(len(options)))]
        lo, hi = APPROACH_MARGIN, line.length - travel - DEPART_MARGIN
        if hi < lo:
            raise ConfigError(
                f"SceneScript.speed {v} m/s is too fast for the synthetic world of {world.location}"
            )
        return Path([line]), float(rng.uniform(lo, hi)), None

    turn = 1 if script.manoeuvre == "left" else -1
    far = (turn == 1) == world.right_hand  # across oncoming traffic: from the lane beside the centre line
    k = 0 if far else LANES_PER_DIR - 1
    candidates = []
    for xj in world.xs:
        for yj in world.ys:
            for d in range(4):
                d2 = (d + turn) % 4
                approach = _full_lane_line(world, d, yj if d in (0, 2) else xj, k)
                depart = _full_lane_line(world, d2, yj if d2 in (0, 2) else xj, k)
                # Arc-length of the junction entry along `approach`, of the exit along `depart`.
                centre_along_in = (xj - approach.start[0]) * UNIT[d][0] + (yj - approach.start[1]) * UNIT[d][
                    1
                ]
                entry = centre_along_in - HALF_JUNCTION
                centre_along_out = (xj - depart.start[0]) * UNIT[d2][0] + (yj - depart.start[1]) * UNIT[d2][1]
                exit_ = centre_along_out + HALF_JUNCTION
                a = approach.poses(np.array([entry]))[0]
                b = depart.poses(np.array([exit_]))[0]
                radius = abs((b[0] - a[0]) * UNIT[d][0] + (b[1] - a[1]) * UNIT[d][1])
                candidates.append(
                    (
                        entry,
                        depart.length - exit_,
                        d,
                        d2,
                        (float(a[0]), float(a[1])),
                        (float(b[0]), float(b[1])),
                        radius,
                    )
                )
    t_turn, approach_len, depart_len = turn_timing(v, duration, candidates[0][6])
    fits = [
        c for c in candidates if c[0] >= approach_len + APPROACH_MARGIN and c[1] >= depart_len + DEPART_MARGIN
    ]
    if not fits:
        raise ConfigError(
            f"SceneScript.speed {v} m/s is too fast for the synthetic world of {world.location}"
        )
    entry, out_len, d, d2, a, b, radius = fits[int(rng.integers(len(fits)))]
    pieces = [
        Line((a[0] - entry * UNIT[d][0], a[1] - entry * UNIT[d][1]), HEADINGS[d], entry),
        Arc(a, HEADINGS[d], radius, turn, math.pi / 2.0),
        Line(b, HEADINGS[d2], out_len),
    ]
    return Path(pieces), entry - approach_len, t_turn
