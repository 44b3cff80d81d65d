"""The agents of one scene, placed around the ego's route.

Vehicles drive the lane graph or are parked along the kerbs, cycles ride or are parked, pedestrians walk the
sidewalks or cross at crossings or stand, and a small construction zone (barriers, cones) sits at the kerb.
Every scene holds objects of each nuScenes detection class close to the ego's route, so that each class is
seen by the sensors in every scene. Agents are placed by rejection: a candidate whose footprint (a row of
discs) touches the ego's or an accepted agent's at any time of the scene is dropped.
"""

from __future__ import annotations

import math

import numpy as np

from netroller.data.synth.catalog import OBJECT_CLASSES, ObjectClass
from netroller.data.synth.config import SceneScript
from netroller.data.synth.geometry import Line, Path
from netroller.data.synth.scenario import (
    ANNOTATION_RANGE,
    EGO_CENTRE_AHEAD,
    EGO_SIZE,
    KEYFRAME_DT,
    SIM_DT,
    Agent,
    Scenario,
    plan_ego,
)
from netroller.data.synth.world import LANES_PER_DIR, PARKING_WIDTH, World


def _discs(size: tuple[float, float, float]) -> tuple[np.ndarray, float]:
    """Local (x forward, y left) centres and the radius of the discs that cover a footprint, with a margin."""
    w, length, _ = size
    long_, short = max(w, length), min(w, length)
    n = max(1, math.ceil(long_ / max(short, 0.5)))
    half = max(0.0, long_ / 2.0 - short / 2.0)
    along = np.linspace(-half, half, n)
    zeros = np.zeros(n)
    offsets = np.stack([along, zeros], axis=1) if length >= w else np.stack([zeros, along], axis=1)
    return offsets, short / 2.0 * 1.1 + 0.25


def _disc_centres(poses: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n_discs, T, 2) from (T, 3) poses and (n_discs, 2) local offsets."""
    c, s = np.cos(poses[:, 2]), np.sin(poses[:, 2])
    x = poses[None, :, 0] + offsets[:, 0:1] * c - offsets[:, 1:2] * s
    y = poses[None, :, 1] + offsets[:, 0:1] * s + offsets[:, 1:2] * c
    return np.stack([x, y], axis=-1)


class _Occupancy:
    """Footprints over time of everything accepted so far."""

    def __init__(self, times: np.ndarray):
        self.times = times
        self.centres = np.zeros((0, len(times), 2))
        self.radii = np.zeros(0)

    def add(self, poses: np.ndarray, size) -> None:
        offsets, r = _discs(size)
        self.centres = np.concatenate([self.centres, _disc_centres(poses, offsets)], axis=0)
        self.radii = np.concatenate([self.radii, np.full(len(offsets), r)])

    def free(self, poses: np.ndarray, size) -> bool:
        if len(self.radii) == 0:
            return True
        offsets, r = _discs(size)
        cand = _disc_centres(poses, offsets)  # (n, T, 2)
        d = np.linalg.norm(cand[:, None] - self.centres[None], axis=-1)  # (n, M, T)
        return bool((d > (r + self.radii)[None, :, None]).all())


def _attribute(cls: ObjectClass, moving: bool) -> str | None:
    if cls.kind == "vehicle":
        return "vehicle.moving" if moving else "vehicle.parked"
    if cls.kind == "cycle":
        return "cycle.with_rider" if moving else "cycle.without_rider"
    if cls.kind == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return None


def _static(cls: ObjectClass, size, x: float, y: float, yaw: float, role: str) -> Agent:
    return Agent(cls, size, Path([Line((x, y), yaw, 1.0)]), 0.0, 0.0, _attribute(cls, False), role)


def _lane_route(
    world: World, start: int, s_start: float, length: float, rng: np.random.Generator
) -> Path | None:
    """A path along the lane graph from `s_start` on lane `start`, at least `length` long, or None at a dead end."""
    pieces = [world.lanes[start].piece]
    total = world.lanes[start].length - s_start
    cur = start
    while total < length:
        outs = world.lanes[cur].outgoing
        if not outs:
            return None
        weights = np.array([3.0 if world.lanes[o].turn == "straight" else 1.0 for o in outs])
        cur = outs[int(rng.choice(len(outs), p=weights / weights.sum()))]
        pieces.append(world.lanes[cur].piece)
        total += world.lanes[cur].length
    return Path(pieces)


def _polyline_path(points: np.ndarray) -> Path:
    pieces = []
    for p, q in zip(points[:-1], points[1:], strict=True):
        dx, dy = q[0] - p[0], q[1] - p[1]
        n = math.hypot(dx, dy)
        if n > 1e-6:
            pieces.append(Line((float(p[0]), float(p[1])), math.atan2(dy, dx), n))
    return Path(pieces)


class _Placer:
    """Accepts agents one by one, refusing any whose footprint ever touches an accepted one (or the ego's)."""

    def __init__(self, world: World, ego: Scenario, rng: np.random.Generator):
        self.world, self.ego, self.rng = world, ego, rng
        self.times = np.arange(0.0, ego.duration + 1e-9, SIM_DT)
        self.key_times = np.arange(0.0, ego.duration + 1e-9, KEYFRAME_DT)
        self.ego_key = ego.ego_poses(self.key_times)[:, :2]
        self.occ = _Occupancy(self.times)
        ego_box = ego.ego_poses(self.times).copy()
        ego_box[:, 0] += EGO_CENTRE_AHEAD * np.cos(ego_box[:, 2])
        ego_box[:, 1] += EGO_CENTRE_AHEAD * np.sin(ego_box[:, 2])
        self.occ.add(ego_box, (EGO_SIZE[0] + 0.6, EGO_SIZE[1] + 1.0, EGO_SIZE[2]))
        self.agents: list[Agent] = []
        slot_d = self.route_distance(np.array([[s["x"], s["y"]] for s in world.parking_slots]))
        by_distance = np.argsort(slot_d, kind="stable")
        self.slot_d = slot_d
        self.near_slots = [int(i) for i in by_distance if 7.0 <= slot_d[i] <= 20.0]
        self.mid_slots = [int(i) for i in by_distance if 7.0 <= slot_d[i] <= 40.0]
        rng.shuffle(self.near_slots)
        rng.shuffle(self.mid_slots)

    def route_distance(self, xy: np.ndarray) -> np.ndarray:
        """Distance of each point in (n, 2) to the ego's nearest keyframe position."""
        return np.linalg.norm(xy[:, None, :] - self.ego_key[None], axis=-1).min(axis=1)

    def fits(self, agent: Agent) -> bool:
        return self.occ.free(agent.poses(self.times), agent.size)

    def add(self, agent: Agent, *, check: bool = True) -> bool:
        poses = agent.poses(self.times)
        if check and not self.occ.free(poses, agent.size):
            return False
        self.occ.add(poses, agent.size)
        self.agents.append(agent)
        return True

    def size(self, cls: ObjectClass) -> tuple[float, float, float]:
        f = self.rng.uniform(0.92, 1.08, size=3)
        return tuple(round(float(a * b), 3) for a, b in zip(cls.size, f, strict=True))


def _construction_zone(p: _Placer) -> None:
    """Barriers with cones between them along the kerb close to the route; the cones stand a little towards
    the lane so that the barriers do not hide them from the lidar."""
    names = ("movable_object.trafficcone", "movable_object.barrier") * 2 + ("movable_object.trafficcone",)
    slots = p.world.parking_slots
    toward_lane = 0.6 if p.world.right_hand else -0.6  # slots lie right of their traffic in right-hand worlds
    for si in [i for i in p.near_slots if p.slot_d[i] <= 15.0] + p.near_slots:
        s = slots[si]
        ux, uy = math.cos(s["yaw"]), math.sin(s["yaw"])
        zone = []
        for j, name in enumerate(names):
            cls = OBJECT_CLASSES[name]
            along = 2.7 * (j - 2)
            cone = name == "movable_object.trafficcone"
            x = s["x"] + along * ux - (uy * toward_lane if cone else 0.0)
            y = s["y"] + along * uy + (ux * toward_lane if cone else 0.0)
            zone.append(
                _static(cls, cls.size, x, y, s["yaw"] + (0.0 if cone else math.pi / 2), "construction")
            )
        if all(p.fits(a) for a in zone):
            for a in zone:
                p.add(a, check=False)
            return


def _parked(p: _Placer) -> None:
    """One parked object of every vehicle and cycle class near the route (two of the small ones, which are
    easily hidden), then parked cars and trucks along the kerbs further out."""
    required = ("vehicle.bicycle", "vehicle.motorcycle") * 2 + (
        "vehicle.car",
        "vehicle.truck",
        "vehicle.construction",
        "vehicle.bus.rigid",
        "vehicle.trailer",
    )
    slots = p.world.parking_slots
    pool = p.near_slots + [i for i in p.mid_slots if i not in p.near_slots]
    for name in required:
        cls = OBJECT_CLASSES[name]
        for si in pool:
            s = slots[si]
            size = p.size(cls)
            # Long vehicles take two slots.
            shift = 0.0 if size[1] < 7.0 else 3.25 * (1 if p.rng.random() < 0.5 else -1)
            x, y = s["x"] + shift * math.cos(s["yaw"]), s["y"] + shift * math.sin(s["yaw"])
            if p.add(_static(cls, size, x, y, s["yaw"], "parked")):
                pool.remove(si)
                break
    for si in pool[:40]:
        if p.rng.random() < 0.35:
            cls = OBJECT_CLASSES["vehicle.car" if p.rng.random() < 0.85 else "vehicle.truck"]
            s = slots[si]
            p.add(_static(cls, p.size(cls), s["x"], s["y"], s["yaw"], "parked"))


def _standing(p: _Placer, count: int = 3) -> None:
    """Pedestrians standing on the sidewalk beside parking slots near the route."""
    outward = PARKING_WIDTH / 2.0 + 1.2
    sign = -1.0 if p.world.right_hand else 1.0  # the sidewalk lies beyond the slot, away from its traffic
    placed = 0
    for si in p.near_slots + p.mid_slots:
        if placed >= count:
            return
        s = p.world.parking_slots[si]
        nx, ny = -math.sin(s["yaw"]), math.cos(s["yaw"])
        cls = OBJECT_CLASSES["human.pedestrian.child" if p.rng.random() < 0.25 else "human.pedestrian.adult"]
        yaw = float(p.rng.uniform(-math.pi, math.pi))
        placed += p.add(
            _static(
                cls, p.size(cls), s["x"] + sign * outward * nx, s["y"] + sign * outward * ny, yaw, "standing"
            )
        )


_DRIVERS = (
    ("vehicle.car", 0.72),
    ("vehicle.truck", 0.1),
    ("vehicle.bus.rigid", 0.06),
    ("vehicle.motorcycle", 0.07),
    ("vehicle.bicycle", 0.05),
)


def _driving(p: _Placer, count: int = 14) -> None:
    """Vehicles and cycles on the lane graph near the route, mostly going straight at junctions."""
    world, rng = p.world, p.rng
    lane_ids = [lp.index for lp in world.lanes if lp.kind == "lane"]
    mid = np.array(
        [world.lanes[i].piece.poses(np.array([world.lanes[i].length / 2]))[0, :2] for i in lane_ids]
    )
    half = np.array([world.lanes[i].length / 2 for i in lane_ids])
    near_lanes = [lane_ids[i] for i in np.flatnonzero(p.route_distance(mid) <= 60.0 + half)]
    names, probs = zip(*_DRIVERS, strict=True)
    placed = 0
    for _ in range(120):
        if placed >= count:
            return
        cls = OBJECT_CLASSES[names[int(rng.choice(len(names), p=np.array(probs)))]]
        lane = near_lanes[int(rng.integers(len(near_lanes)))]
        if cls.category == "vehicle.bicycle" and world.lanes[lane].k != LANES_PER_DIR - 1:
            continue  # cycles keep to the kerb-side lane
        speed = float(rng.uniform(3.0, 6.0) if cls.category == "vehicle.bicycle" else rng.uniform(4.0, 11.0))
        s_start = float(rng.uniform(0.0, world.lanes[lane].length))
        path = _lane_route(world, lane, s_start, speed * p.ego.duration + 15.0, rng)
        if path is None:
            continue
        role = "riding" if cls.kind == "cycle" else "driving"
        agent = Agent(cls, p.size(cls), path, s_start, speed, _attribute(cls, True), role)
        if p.route_distance(agent.poses(p.key_times)[:, :2]).min() > ANNOTATION_RANGE:
            continue
        placed += p.add(agent)


def _walking(p: _Placer, count: int = 10) -> None:
    """Pedestrians walking round blocks on the sidewalks near the route."""
    rng = p.rng
    rings = [r for r in p.world.sidewalk_rings if len(r) > 2 and p.route_distance(r[:, :2]).min() < 40.0]
    placed = 0
    for _ in range(60):
        if placed >= count or not rings:
            return
        pts = rings[int(rng.integers(len(rings)))][:, :2]
        if rng.random() < 0.5:
            pts = pts[::-1]
        path = _polyline_path(np.concatenate([pts, pts[1:]], axis=0))  # twice round: walks never run out
        d = p.route_distance(path.poses(np.linspace(0, path.length / 2, 200))[:, :2])
        near = np.flatnonzero(d < 35.0)
        if len(near) == 0:
            continue
        s0 = float(path.length / 2 * near[int(rng.integers(len(near)))] / 199)
        cls = OBJECT_CLASSES["human.pedestrian.child" if rng.random() < 0.2 else "human.pedestrian.adult"]
        speed = float(rng.uniform(1.0, 1.6))
        placed += p.add(Agent(cls, p.size(cls), path, s0, speed, "pedestrian.moving", "walking"))


def _crossing(p: _Placer, count: int = 4) -> None:
    """Pedestrians crossing the road at crossings near the route, then walking on along the sidewalk."""
    rng = p.rng
    crossings = [
        c
        for c in p.world.crossings
        if p.route_distance(np.array([c["polygon"].centroid.coords[0]]))[0] < 45.0
    ]
    rng.shuffle(crossings)
    ped = OBJECT_CLASSES["human.pedestrian.adult"]
    for c in crossings[:count]:
        p0, p1 = np.array(c["path"][0]), np.array(c["path"][1])
        if rng.random() < 0.5:
            p0, p1 = p1, p0
        path = _polyline_path(np.stack([p0, p1, p1 + 40.0 * np.array(c["away"])]))
        s0 = float(rng.uniform(0.0, 4.0))
        p.add(
            Agent(ped, p.size(ped), path, s0, float(rng.uniform(1.1, 1.5)), "pedestrian.moving", "crossing")
        )


def populate(world: World, ego: Scenario, rng: np.random.Generator) -> list[Agent]:
    """Agents of one scene around the ego's route."""
    p = _Placer(world, ego, rng)
    _construction_zone(p)
    _parked(p)
    _standing(p)
    _driving(p)
    _walking(p)
    _crossing(p)
    return p.agents


def make_scenario(world: World, script: SceneScript, samples: int, rng: np.random.Generator) -> Scenario:
    duration = (samples - 1) * KEYFRAME_DT
    path, s0, t_turn = plan_ego(world, script, duration, rng)
    scenario = Scenario(script, duration, path, s0, t_turn, [])
    scenario.agents = populate(world, scenario, rng)
    return scenario
