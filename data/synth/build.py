"""`generate(cfg)`: builds a synthetic nuScenes v1.0-mini dataset root (module named `build` so that it does not
shadow the `generate` function the package exports).

Layout written (as the devkit expects it):
    OUT/v1.0-mini/*.json               the 13 tables
    OUT/samples/CAM_*/...jpg           keyframe images, 6 cameras
    OUT/samples/LIDAR_TOP/...pcd.bin   keyframe sweeps
    OUT/maps/<token>.png               the map table's semantic-prior masks
    OUT/maps/expansion/<location>.json map expansion v1.3
    OUT/can_bus/<scene>_pose.json      CAN-bus expansion, pose messages only (see `can_bus`)
    OUT/drivelm_qa.json                DriveLM-format QA for every keyframe

Everything is built in a temporary folder beside OUT and renamed onto it at the end. Keyframes are rendered
by a process pool where there is more than one core; the output does not depend on it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion
from tqdm import tqdm

from netroller.data.synth import drivelm
from netroller.data.synth.can_bus import pose_messages
from netroller.data.synth.catalog import visibility_token
from netroller.data.synth.config import SynthConfig
from netroller.data.synth.geometry import box_corners, pose_matrix, yaw_quaternion
from netroller.data.synth.lidar import LidarBox, sweep
from netroller.data.synth.mapexp import map_expansion
from netroller.data.synth.plan import RIGHT_HAND, ScenePlan, location_rng, plan_scenes
from netroller.data.synth.raster import rasterize, semantic_prior_png
from netroller.data.synth.render import CameraRenderer, RenderBox, encode_jpeg
from netroller.data.synth.scenario import (
    ANNOTATION_RANGE,
    KEYFRAME_DT,
    Scenario,
    required_junctions,
)
from netroller.data.synth.sensors import (
    CAMERAS,
    LIDAR,
    LIDAR_ROTATION,
    LIDAR_TRANSLATION,
    cameras,
    ego_from_lidar,
)
from netroller.data.synth.tables import TABLE_NAMES, AnnotationIn, TableBuilder
from netroller.data.synth.tokens import TokenFactory, stream
from netroller.data.synth.traffic import make_scenario
from netroller.data.synth.world import BLOCK_LENGTHS, World, build_world
from netroller.errors import ConfigError

VERSION = "v1.0-mini"
EXTENSION = 70.0  # metres of road beyond the outer junctions


@dataclass
class _SceneState:
    plan: ScenePlan
    scenario: Scenario
    spans: list[tuple[int, int]]  # per agent: first and last annotated keyframe (first > last: never)
    agent_poses: np.ndarray  # (agents, K, 3)
    ego_poses: np.ndarray  # (K, 3)


# Per-process state of the keyframe workers (inherited on fork, or set in the parent when sequential).
_STATE: dict = {}


def generate(cfg: SynthConfig) -> Path:
    """Generate the dataset described by `cfg`; returns its root (`cfg.out`)."""
    out = cfg.out
    _check_out(cfg)
    plans = plan_scenes(cfg)
    worlds, labels = _build_worlds(cfg, plans)
    scenes = [_prepare_scene(cfg, p, worlds[p.location]) for p in plans]
    cams = cameras(cfg.image_width, cfg.image_height)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for ch in CAMERAS + (LIDAR,):
            (tmp / "samples" / ch).mkdir(parents=True)
        (tmp / "maps" / "expansion").mkdir(parents=True)
        (tmp / "can_bus").mkdir()
        (tmp / VERSION).mkdir()
        _STATE.update(root=tmp, scenes=scenes, worlds=worlds, labels=labels, cams=cams, renderers={})
        jobs = [(si, f) for si in range(len(scenes)) for f in range(cfg.samples_per_scene)]
        results = _run_jobs(jobs)
        tables, qa = _assemble(cfg, scenes, cams, results)
        for loc, world in worlds.items():
            record = tables.add_map(loc)
            semantic_prior_png(labels[loc]).save(tmp / record["filename"], format="PNG", optimize=False)
            exp = map_expansion(world, TokenFactory(cfg.seed, "map/" + loc))
            (tmp / "maps" / "expansion" / f"{loc}.json").write_text(json.dumps(exp, separators=(",", ":")))
        for st in scenes:
            rng = stream(cfg.seed, "can_bus/" + st.plan.name)
            msgs = pose_messages(st.scenario, st.plan.start_us, cfg.samples_per_scene, rng)
            (tmp / "can_bus" / f"{st.plan.name}_pose.json").write_text(
                json.dumps(msgs, separators=(",", ":"))
            )
        for name in TABLE_NAMES:
            (tmp / VERSION / f"{name}.json").write_text(json.dumps(tables.tables[name], indent=0) + "\n")
        (tmp / "drivelm_qa.json").write_text(json.dumps(qa, indent=1) + "\n")
        _check_out(cfg)  # again: OUT may have been filled while we worked
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _STATE.clear()
    return out


def _build_worlds(cfg: SynthConfig, plans: list[ScenePlan]) -> tuple[dict[str, World], dict[str, np.ndarray]]:
    """One world per map location, with its own block length, as large as its scenes' routes need."""
    duration = (cfg.samples_per_scene - 1) * KEYFRAME_DT
    worlds: dict[str, World] = {}
    labels: dict[str, np.ndarray] = {}
    for loc in sorted({p.location for p in plans}):
        block = BLOCK_LENGTHS[int(location_rng(cfg.seed, loc).integers(len(BLOCK_LENGTHS)))]
        n = max(
            required_junctions(p.script.speed, duration, p.script.manoeuvre, EXTENSION, block)
            for p in plans
            if p.location == loc
        )
        worlds[loc] = build_world(
            loc, right_hand=RIGHT_HAND.get(loc, False), junctions=n, extension=EXTENSION, block=block
        )
        labels[loc] = rasterize(worlds[loc])
    return worlds, labels


def _prepare_scene(cfg: SynthConfig, plan: ScenePlan, world: World) -> _SceneState:
    """The scene's motion, sampled at its keyframes, and which keyframes annotate each agent: every keyframe
    from the first to the last one that sees it within `ANNOTATION_RANGE` (instances are contiguous)."""
    k = cfg.samples_per_scene
    scenario = make_scenario(world, plan.script, k, stream(cfg.seed, "scene/" + plan.name))
    times = np.arange(k) * KEYFRAME_DT
    ego = scenario.ego_poses(times)
    poses = np.stack([a.poses(times) for a in scenario.agents]) if scenario.agents else np.zeros((0, k, 3))
    dist = np.linalg.norm(poses[:, :, :2] - ego[None, :, :2], axis=-1)
    spans = []
    for row in dist:
        inside = np.flatnonzero(row <= ANNOTATION_RANGE)
        spans.append((int(inside[0]), int(inside[-1])) if len(inside) else (1, 0))
    return _SceneState(plan, scenario, spans, poses, ego)


def _check_out(cfg: SynthConfig) -> None:
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"SynthConfig.out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(
            f"SynthConfig.out {out} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished dataset onto `out`; an old `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "data")
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run_jobs(jobs: list[tuple[int, int]]) -> list[dict]:
    workers = _worker_count(len(jobs))
    if workers <= 1:
        with tqdm(total=len(jobs), desc="synth keyframes", unit="kf", leave=False) as bar:
            out = []
            for job in jobs:
                out.append(_keyframe(job))
                bar.update(1)
            return out
    import multiprocessing as mp

    # The pool starts before the progress bar, whose monitor thread must not be running at fork time.
    with mp.get_context("fork").Pool(workers) as pool:
        with tqdm(total=len(jobs), desc="synth keyframes", unit="kf", leave=False) as bar:
            out = []
            for r in pool.imap(_keyframe, jobs, chunksize=2):
                out.append(r)
                bar.update(1)
            return out


def _worker_count(n_jobs: int) -> int:
    """Processes for the keyframes: forked workers (they inherit the world) on a multi-core machine, but only
    from a single-threaded parent (forking beside live threads, e.g. Ray's or torch's, is unsafe) and only
    when there is enough work to pay for them."""
    import multiprocessing as mp
    import threading

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if n_jobs < 16 or threading.active_count() > 1 or "fork" not in mp.get_all_start_methods():
        return 1
    return max(1, min(cores, 8))


def _keyframe(job: tuple[int, int]) -> dict:
    """Render the 6 cameras and the lidar of one keyframe; returns per-annotation measurements."""
    si, f = job
    st: _SceneState = _STATE["scenes"][si]
    plan = st.plan
    root: Path = _STATE["root"]
    labels = _STATE["labels"][plan.location]
    world: World = _STATE["worlds"][plan.location]
    renderers = _STATE["renderers"].get(plan.location)
    if renderers is None:
        renderers = _STATE["renderers"][plan.location] = [CameraRenderer(c, labels) for c in _STATE["cams"]]

    ex, ey, eyaw = (float(v) for v in st.ego_poses[f])
    ego_t, ego_q = [ex, ey, 0.0], yaw_quaternion(eyaw)
    world_from_ego = pose_matrix(ego_t, ego_q)
    timestamp = plan.start_us + f * int(KEYFRAME_DT * 1_000_000)

    annotated = [i for i, (a, b) in enumerate(st.spans) if a <= f <= b]
    boxes = []
    for i in annotated:
        agent = st.scenario.agents[i]
        x, y, yaw = (float(v) for v in st.agent_poses[i, f])
        w, length, h = agent.size
        boxes.append(
            {
                "i": i,
                "translation": [x, y, h / 2.0],
                "size": [w, length, h],
                "yaw": yaw,
                "rotation": yaw_quaternion(yaw),
                "agent": agent,
            }
        )

    files = {}
    views: dict[int, dict[str, object]] = {b["i"]: {} for b in boxes}
    render_boxes = [
        RenderBox(b["i"] + 1, box_corners(b["translation"], b["size"], b["yaw"]), b["agent"].cls.colour)
        for b in boxes
    ]
    for r in renderers:
        image, vis = r.render(world_from_ego, render_boxes)
        rel = f"samples/{r.cam.channel}/{plan.logfile}__{r.cam.channel}__{timestamp}.jpg"
        (root / rel).write_bytes(encode_jpeg(image))
        files[r.cam.channel] = rel
        for ident, v in vis.items():
            views[ident - 1][r.cam.channel] = v

    world_from_lidar = world_from_ego @ ego_from_lidar()
    lidar_from_world = np.linalg.inv(world_from_lidar)
    lidar_boxes = []
    for b in boxes:
        c = lidar_from_world @ np.array([*b["translation"], 1.0])
        lidar_boxes.append(
            LidarBox(c[:3], tuple(b["size"]), b["yaw"] - eyaw + math.pi / 2.0, b["agent"].cls.intensity)
        )
    points = sweep(LIDAR_TRANSLATION[2], world_from_lidar, lidar_boxes, labels, world.canvas[1])
    rel = f"samples/{LIDAR}/{plan.logfile}__{LIDAR}__{timestamp}.pcd.bin"
    (root / rel).write_bytes(points.tobytes())
    files[LIDAR] = rel

    # Count points per box exactly as the devkit would: the annotation's box moved into the lidar frame.
    xyz = points[:, :3].T
    ego_inv, lidar_inv = Quaternion(ego_q).inverse, Quaternion(LIDAR_ROTATION).inverse
    anns = []
    for b in boxes:
        box = Box(b["translation"], b["size"], Quaternion(b["rotation"]))
        box.translate(-np.array(ego_t))
        box.rotate(ego_inv)
        box.translate(-np.array(LIDAR_TRANSLATION))
        box.rotate(lidar_inv)
        # Only points near the box can be in it; `points_in_box` is per point, so the count is unchanged.
        r = 0.5 * float(np.linalg.norm(b["size"])) + 0.1
        near = np.flatnonzero((np.abs(xyz[0] - box.center[0]) <= r) & (np.abs(xyz[1] - box.center[1]) <= r))
        n_pts = int(points_in_box(box, xyz[:, near]).sum()) if len(near) else 0
        v = views[b["i"]]
        total = sum(x.total_px for x in v.values())
        visible = sum(x.visible_px for x in v.values())
        frac = min(1.0, visible / total) if total >= 1.0 else 0.0
        anns.append(
            {
                "i": b["i"],
                "translation": b["translation"],
                "size": b["size"],
                "rotation": b["rotation"],
                "yaw": b["yaw"],
                "num_lidar_pts": n_pts,
                "visible": frac,
                "views": v,
            }
        )
    return {
        "scene": si,
        "frame": f,
        "timestamp": timestamp,
        "ego_t": ego_t,
        "ego_q": ego_q,
        "ego_yaw": eyaw,
        "files": files,
        "anns": anns,
    }


def _assemble(
    cfg: SynthConfig, scenes: list[_SceneState], cams, results: list[dict]
) -> tuple[TableBuilder, dict]:
    tables = TableBuilder(cfg.seed)
    by_scene: dict[int, list[dict]] = {}
    for r in results:
        by_scene.setdefault(r["scene"], []).append(r)
    qa_frames = []
    for si, st in enumerate(scenes):
        p = st.plan
        ctx = tables.add_scene(
            name=p.name,
            description=drivelm.scene_description(st.scenario),
            location=p.location,
            logfile=p.logfile,
            date=p.date_captured,
            vehicle=p.vehicle,
            cameras=cams,
        )
        for r in sorted(by_scene[si], key=lambda r: r["frame"]):
            anns = []
            for a in r["anns"]:
                agent = st.scenario.agents[a["i"]]
                anns.append(
                    AnnotationIn(
                        a["i"],
                        agent.cls.category,
                        agent.attribute,
                        a["translation"],
                        a["size"],
                        a["rotation"],
                        a["num_lidar_pts"],
                        visibility_token(a["visible"]),
                    )
                )
            sample = tables.add_keyframe(
                ctx,
                timestamp=r["timestamp"],
                ego_translation=r["ego_t"],
                ego_rotation=r["ego_q"],
                files=r["files"],
                image_size=(cfg.image_width, cfg.image_height),
                annotations=anns,
            )
            qa_frames.append((ctx["scene"]["token"], sample["token"], st, r))
    return tables, drivelm.build(qa_frames)
