"""The synthetic nuScenes generator: the devkit loads its output like the real v1.0-mini, and what it writes
(images, lidar, map, QA) agrees with its own annotations."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion

from netroller.data.synth import SceneScript, SynthConfig, generate
from netroller.data.synth.catalog import OBJECT_CLASSES
from netroller.errors import ConfigError

TINY = {"image_width": 96, "image_height": 54}


# ------------------------------------------------------------------------------------------------ helpers


def _lidar_from_global(nusc, sample: dict) -> np.ndarray:
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    g_e = np.eye(4)
    g_e[:3, :3] = Quaternion(pose["rotation"]).rotation_matrix
    g_e[:3, 3] = pose["translation"]
    e_l = np.eye(4)
    e_l[:3, :3] = Quaternion(cs["rotation"]).rotation_matrix
    e_l[:3, 3] = cs["translation"]
    return np.linalg.inv(g_e @ e_l)


def _scene_samples(nusc, scene: dict) -> list[dict]:
    out, tok = [], scene["first_sample_token"]
    while tok:
        s = nusc.get("sample", tok)
        out.append(s)
        tok = s["next"]
    return out


def _future_in_lidar(nusc, samples: list[dict], i: int, steps: int) -> np.ndarray:
    """Position of the ego's lidar `steps` keyframes after sample `i`, in sample `i`'s lidar frame."""
    fut = samples[i + steps]
    sd = nusc.get("sample_data", fut["data"]["LIDAR_TOP"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    p = Quaternion(pose["rotation"]).rotate(np.array(cs["translation"])) + np.array(pose["translation"])
    return (_lidar_from_global(nusc, samples[i]) @ np.append(p, 1.0))[:3]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """Three scripted scenes: straight at 10 m/s, a left and a right turn at 6 m/s."""
    from nuscenes import NuScenes

    root = tmp_path_factory.mktemp("scripted") / "nuscenes"
    scripts = (
        SceneScript(manoeuvre="straight", speed=10.0),
        SceneScript(manoeuvre="left", speed=6.0),
        SceneScript(manoeuvre="right", speed=6.0),
    )
    generate(SynthConfig(out=root, scenes=3, samples_per_scene=10, seed=3, scripts=scripts, **TINY))
    return NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False), scripts


# ----------------------------------------------------------------------------------------- the tables


def test_devkit_loads_all_tables(nusc):
    for name in nusc.table_names:
        assert len(getattr(nusc, name)) > 0 or name == "image_annotations", name
    assert len(nusc.scene) == 4
    assert all(len(s["data"]) == 7 for s in nusc.sample)
    assert len(nusc.sample) == 4 * 8


def test_categories_carry_real_names_and_indices(nusc):
    by_name = {c["name"]: c["index"] for c in nusc.category}
    assert by_name["vehicle.car"] == 17
    assert by_name["human.pedestrian.adult"] == 2
    assert by_name["movable_object.trafficcone"] == 12
    assert sorted(by_name.values()) == list(range(32))
    assert {a["name"] for a in nusc.attribute} >= {"vehicle.moving", "vehicle.parked", "pedestrian.standing"}
    assert [v["level"] for v in nusc.visibility] == ["v0-40", "v40-60", "v60-80", "v80-100"]


def test_both_splits_present_with_mini_scene_names(nusc):
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    names = {s["name"] for s in nusc.scene}
    assert names == set(splits["mini_train"][:3]) | set(splits["mini_val"][:1])


@pytest.mark.parametrize("seed", range(6))
def test_val_scenes_are_drawn_within_the_training_scenes(seed):
    """Each val scene's manoeuvre is one at least 2 training scenes have, at a speed between theirs; the
    training scripts are the ones drawn before the val scenes are (the val draw has its own stream)."""
    from netroller.data.synth.plan import default_scripts, mini_scene_names

    splits = [split for _, split in mini_scene_names(10)]
    scripts = default_scripts(splits, seed)
    train = [s for s, split in zip(scripts, splits, strict=True) if split == "mini_train"]
    val = [s for s, split in zip(scripts, splits, strict=True) if split == "mini_val"]
    assert len(train) == 8 and len(val) == 2
    for v in val:
        speeds = [t.speed for t in train if t.manoeuvre == v.manoeuvre]
        assert len(speeds) >= 2 and min(speeds) <= v.speed <= max(speeds)
    all_train = default_scripts(["mini_train"] * 10, seed)  # nothing to redraw
    assert [s for s, split in zip(all_train, splits, strict=True) if split == "mini_train"] == train


@pytest.mark.parametrize("scenes", [2, 4, 6])
def test_val_scripts_stay_as_drawn_with_fewer_than_6_training_scenes(scenes):
    from netroller.data.synth.plan import default_scripts, mini_scene_names

    splits = [split for _, split in mini_scene_names(scenes)]
    assert default_scripts(splits, 0) == default_scripts(["mini_train"] * scenes, 0)


def test_linked_lists_and_counts_are_consistent(nusc):
    for scene in nusc.scene:
        samples = _scene_samples(nusc, scene)
        assert len(samples) == scene["nbr_samples"]
        assert samples[-1]["token"] == scene["last_sample_token"]
        assert all(
            b["timestamp"] - a["timestamp"] == 500_000 for a, b in zip(samples, samples[1:], strict=False)
        )
    for inst in nusc.instance:
        n, tok = 0, inst["first_annotation_token"]
        while tok:
            ann = nusc.get("sample_annotation", tok)
            assert ann["instance_token"] == inst["token"]
            last, tok, n = tok, ann["next"], n + 1
        assert n == inst["nbr_annotations"]
        assert last == inst["last_annotation_token"]


def test_lidar_calibration_is_exactly_yaw_minus_90(nusc):
    for cs in nusc.calibrated_sensor:
        if nusc.get("sensor", cs["sensor_token"])["channel"] == "LIDAR_TOP":
            assert cs["translation"] == [0.943713, 0.0, 1.84023]
            assert cs["rotation"] == pytest.approx([0.70710678, 0.0, 0.0, -0.70710678], abs=1e-8)


# --------------------------------------------------------------------------------------- determinism


def test_same_config_gives_byte_identical_output(tmp_path):
    a = generate(SynthConfig(out=tmp_path / "a", scenes=2, samples_per_scene=3, seed=5, **TINY))
    b = generate(SynthConfig(out=tmp_path / "b", scenes=2, samples_per_scene=3, seed=5, **TINY))
    ha, hb = _tree_hashes(a), _tree_hashes(b)
    assert ha == hb
    assert len(ha) > 13
    assert sum(name.startswith("can_bus/") for name in ha) == 2


def test_other_seed_gives_other_tokens(tmp_path):
    a = generate(SynthConfig(out=tmp_path / "a", scenes=1, samples_per_scene=2, seed=1, **TINY))
    b = generate(SynthConfig(out=tmp_path / "b", scenes=1, samples_per_scene=2, seed=2, **TINY))
    sa = json.loads((a / "v1.0-mini" / "sample.json").read_text())
    sb = json.loads((b / "v1.0-mini" / "sample.json").read_text())
    assert sa[0]["token"] != sb[0]["token"]


def test_generation_leaves_no_temporary_folders(tmp_path):
    generate(SynthConfig(out=tmp_path / "ds", scenes=1, samples_per_scene=2, **TINY))
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


# ----------------------------------------------------------------------------------- sensors agree


def _chroma_match(pixels: np.ndarray, colour) -> np.ndarray:
    """Pixels whose RGB direction is within ~6 degrees of `colour` (shading scales colour, keeps direction)."""
    p = pixels.reshape(-1, 3).astype(float) + 1e-6
    c = np.asarray(colour, dtype=float)
    cos = (p @ c) / (np.linalg.norm(p, axis=1) * np.linalg.norm(c))
    return cos > math.cos(math.radians(6.0))


def test_annotated_object_is_visible_in_its_camera(nusc):
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points
    from PIL import Image

    checked = 0
    for sample in nusc.sample[::3]:
        cam_token = sample["data"]["CAM_FRONT"]
        path, boxes, k = nusc.get_sample_data(cam_token, box_vis_level=BoxVisibility.ANY)
        img = np.asarray(Image.open(path).convert("RGB"))
        h, w, _ = img.shape
        rects = []  # (depth, x0, y0, x1, y1, box) in the image, of everything at least partly in view
        for box in boxes:
            corners = box.corners()
            uv = view_points(corners[:, corners[2] > 0.1], k, normalize=True)[:2]
            rects.append((box.center[2], uv[0].min(), uv[1].min(), uv[0].max(), uv[1].max(), box))
        for depth, x0, y0, x1, y1, box in rects:
            whole = x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h and (box.corners()[2] > 0.1).all()
            if not whole or box.name not in OBJECT_CLASSES or (x1 - x0) * (y1 - y0) < 400:
                continue
            # The middle of the projected box, unless something nearer covers it, shows the class colour.
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 0.15, (y1 - y0) * 0.15
            covered = any(
                d < depth and a0 < cx + rx and a1 > cx - rx and b0 < cy + ry and b1 > cy - ry
                for d, a0, b0, a1, b1, _ in rects
            )
            if covered:
                continue
            patch = img[
                int(max(cy - ry, 0)) : int(min(cy + ry, h)) + 1,
                int(max(cx - rx, 0)) : int(min(cx + rx, w)) + 1,
            ]
            colour = OBJECT_CLASSES[box.name].colour
            assert _chroma_match(patch, colour).mean() > 0.8, (box.name, box.token)
            # ... which the rest of the image mostly does not show.
            assert _chroma_match(img, colour).mean() < 0.5
            checked += 1
    assert checked >= 3


def test_num_lidar_pts_matches_the_point_files(nusc):
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    nonzero = 0
    for sample in nusc.sample[::4]:
        lidar_token = sample["data"]["LIDAR_TOP"]
        path, boxes, _ = nusc.get_sample_data(lidar_token)
        raw = np.fromfile(path, dtype=np.float32)
        assert raw.size % 5 == 0
        rings = raw.reshape(-1, 5)[:, 4]
        assert rings.min() >= 0 and rings.max() <= 31
        pc = LidarPointCloud.from_file(path)
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            assert int(points_in_box(box, pc.points[:3]).sum()) == ann["num_lidar_pts"]
            assert ann["num_radar_pts"] == 0
            nonzero += ann["num_lidar_pts"] > 0
    assert nonzero > 10


def test_lidar_sees_the_ground_below_the_sensor(nusc):
    from nuscenes.utils.data_classes import LidarPointCloud

    path = nusc.get_sample_data_path(nusc.sample[0]["data"]["LIDAR_TOP"])
    pts = LidarPointCloud.from_file(path).points
    z = pts[2, np.hypot(pts[0], pts[1]) < 10]
    on_ground = np.abs(z + 1.84023) < 1e-4
    assert on_ground.sum() > 1000
    assert z.min() > -1.84023 - 1e-4  # nothing below the ground


# --------------------------------------------------------------------------------------------- map


def test_map_expansion_loads_and_returns_lanes_and_dividers(nusc, synth_root):
    from nuscenes.map_expansion.map_api import NuScenesMap

    sample = nusc.sample[0]
    scene = nusc.get("scene", sample["scene_token"])
    location = nusc.get("log", scene["log_token"])["location"]
    nmap = NuScenesMap(dataroot=str(synth_root), map_name=location)
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    x, y = pose["translation"][:2]
    patch = (x - 30, y - 30, x + 30, y + 30)
    recs = nmap.get_records_in_patch(
        patch, ["lane", "road_divider", "lane_divider", "ped_crossing", "road_segment"]
    )
    assert recs["lane"] and recs["road_segment"]
    assert recs["road_divider"] or recs["lane_divider"]
    line = nmap.extract_line(nmap.get("lane_divider", recs["lane_divider"][0])["line_token"])
    assert line.length > 1.0
    poly = nmap.extract_polygon(nmap.get("lane", recs["lane"][0])["polygon_token"])
    assert poly.area > 10.0
    # The ego drives on a lane the map knows, inside the map table's drivable mask.
    assert nmap.layers_on_point(x, y)["drivable_area"]
    assert nmap.get_closest_lane(x, y, radius=3.0)
    map_record = nusc.get("map", nusc.get("log", scene["log_token"])["map_token"])
    assert map_record["mask"].is_on_mask(x, y)[0]
    # Neighbouring records share nodes, so the devkit can follow the road network.
    assert any(nmap.get_next_roads(x, y).values())


def test_map_explorer_rasterizes_and_draws_a_patch(nusc, synth_root, tmp_path):
    import matplotlib.pyplot as plt
    from nuscenes.map_expansion.map_api import NuScenesMap

    location = nusc.log[0]["location"]
    nmap = NuScenesMap(dataroot=str(synth_root), map_name=location)
    x, y = nmap.canvas_edge[0] / 2, nmap.canvas_edge[1] / 2
    mask = nmap.get_map_mask(
        (x, y, 100, 100), 0.0, ["drivable_area", "lane", "ped_crossing", "lane_divider"], (200, 200)
    )
    assert mask.shape == (4, 200, 200)
    assert all(m.any() for m in mask)
    # Line layers only: polygon drawing goes through descartes, which fails on shapely 2 for any map.
    fig, _ = nmap.render_map_patch(
        (x - 50, y - 50, x + 50, y + 50), ["lane_divider", "road_divider"], figsize=(3, 3)
    )
    fig.savefig(tmp_path / "patch.png")
    plt.close("all")
    assert (tmp_path / "patch.png").stat().st_size > 0


def test_render_sample_runs(nusc, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = tmp_path / "sample.png"
    nusc.render_sample(nusc.sample[2]["token"], out_path=str(out), verbose=False)
    plt.close("all")
    assert out.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------- detection


def test_detection_eval_of_ground_truth_gives_map_close_to_one(nusc, tmp_path):
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.splits import create_splits_scenes

    val = set(create_splits_scenes()["mini_val"])
    attr = {a["token"]: a["name"] for a in nusc.attribute}
    results = {}
    for s in nusc.sample:
        if nusc.get("scene", s["scene_token"])["name"] not in val:
            continue
        boxes = []
        for tok in s["anns"]:
            a = nusc.get("sample_annotation", tok)
            name = category_to_detection_name(a["category_name"])
            if name is None or a["num_lidar_pts"] == 0:  # a detector cannot see what no sensor hit
                continue
            boxes.append(
                {
                    "sample_token": s["token"],
                    "translation": a["translation"],
                    "size": a["size"],
                    "rotation": a["rotation"],
                    "velocity": [float(v) for v in nusc.box_velocity(tok)[:2]],
                    "detection_name": name,
                    "detection_score": 1.0,
                    "attribute_name": attr[a["attribute_tokens"][0]] if a["attribute_tokens"] else "",
                }
            )
        results[s["token"]] = boxes
    meta = {
        "use_camera": True,
        "use_lidar": False,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": meta, "results": results}))
    ev = DetectionEval(
        nusc,
        config_factory("detection_cvpr_2019"),
        str(path),
        "mini_val",
        str(tmp_path / "eval"),
        verbose=False,
    )
    metrics, _ = ev.evaluate()
    assert metrics.mean_ap > 0.99
    assert metrics.nd_score > 0.95


# ------------------------------------------------------------------------------------------ the ego


def test_straight_scene_moves_exactly_along_lidar_y(scripted):
    nusc, scripts = scripted
    scene = nusc.scene[[s.manoeuvre for s in scripts].index("straight")]
    samples = _scene_samples(nusc, scene)
    for step in range(1, 7):
        p = _future_in_lidar(nusc, samples, 0, step)
        assert p == pytest.approx([0.0, 5.0 * step, 0.0], abs=1e-6)


@pytest.mark.parametrize("manoeuvre", ["left", "right"])
def test_turn_scene_reaches_2m_lateral_within_3s(scripted, manoeuvre):
    nusc, scripts = scripted
    scene = nusc.scene[[s.manoeuvre for s in scripts].index(manoeuvre)]
    samples = _scene_samples(nusc, scene)
    lateral = [_future_in_lidar(nusc, samples, i, 6)[0] for i in range(len(samples) - 6)]
    if manoeuvre == "left":
        assert min(lateral) <= -2.0
    else:
        assert max(lateral) >= 2.0


def test_ego_height_is_constant(nusc):
    assert {p["translation"][2] for p in nusc.ego_pose} == {0.0}


# ------------------------------------------------------------------------------------------- CAN bus

POSE_KEYS = ["accel", "orientation", "pos", "rotation_rate", "utime", "vel"]  # the real files' key order


def _pose_messages(synth_root, scene_name: str) -> list[dict]:
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    return NuScenesCanBus(dataroot=str(synth_root)).get_messages(scene_name, "pose")


def test_can_bus_pose_messages_load_through_the_devkit_and_span_the_scene(nusc, synth_root):
    from netroller.data.synth.can_bus import POSE_HZ

    for scene in nusc.scene:
        msgs = _pose_messages(synth_root, scene["name"])
        assert all(list(m) == POSE_KEYS for m in msgs)
        utimes = np.array([m["utime"] for m in msgs])
        np.testing.assert_array_equal(np.diff(utimes), 1_000_000 // POSE_HZ)
        keyframes = [s["timestamp"] for s in _scene_samples(nusc, scene)]
        assert -300_000 <= utimes[0] - keyframes[0] <= 100_000
        assert utimes[-1] > keyframes[-1]


def test_can_bus_poses_follow_the_ego_poses(nusc, synth_root):
    """At every keyframe the pose messages around it interpolate to the ego_pose record."""
    for scene in nusc.scene:
        msgs = _pose_messages(synth_root, scene["name"])
        utimes = np.array([m["utime"] for m in msgs])
        for sample in _scene_samples(nusc, scene):
            pose = nusc.get(
                "ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"]
            )
            k = int(np.searchsorted(utimes, sample["timestamp"], side="right"))
            a, b = msgs[k - 1], msgs[k]
            w = (sample["timestamp"] - a["utime"]) / (b["utime"] - a["utime"])
            pos = (1 - w) * np.array(a["pos"]) + w * np.array(b["pos"])
            assert pos == pytest.approx(pose["translation"], abs=2e-2)
            q = Quaternion(a["orientation"]).rotation_matrix @ [1.0, 0.0, 0.0]
            expected = Quaternion(pose["rotation"]).rotation_matrix @ [1.0, 0.0, 0.0]
            assert q == pytest.approx(expected, abs=0.05)


def test_can_bus_motion_is_in_the_ego_frame_and_consistent_with_the_positions(scripted):
    """vel is (speed, 0, 0); yaw rate and position steps agree with the orientation and vel; accel is the
    centripetal acceleration plus gravity."""
    nusc, scripts = scripted
    root = Path(nusc.dataroot)
    for scene, script in zip(nusc.scene, scripts, strict=True):
        msgs = _pose_messages(root, scene["name"])
        dt = (msgs[1]["utime"] - msgs[0]["utime"]) * 1e-6
        yaw = np.unwrap([Quaternion(m["orientation"]).yaw_pitch_roll[0] for m in msgs])
        pos = np.array([m["pos"] for m in msgs])
        rate = np.array([m["rotation_rate"][2] for m in msgs])
        for m in msgs:
            assert m["vel"] == [script.speed, 0.0, 0.0]
            assert m["accel"] == pytest.approx([0.0, script.speed * m["rotation_rate"][2], 9.81])
        step = np.linalg.norm(np.diff(pos[:, :2], axis=0), axis=1)
        assert step == pytest.approx(script.speed * dt, rel=1e-3)
        # The heading changes by the yaw rate (mid-step average; a step into or out of an arc is half-way).
        assert np.diff(yaw) == pytest.approx(0.5 * (rate[1:] + rate[:-1]) * dt, abs=0.02)
        sign = {"straight": 0.0, "left": 1.0, "right": -1.0}[script.manoeuvre]
        if sign == 0.0:
            np.testing.assert_array_equal(rate, 0.0)
        else:
            assert (sign * rate >= 0).all() and (sign * rate).max() > 0  # a left turn turns counter-clockwise


# --------------------------------------------------------------------------------------------- QA


def test_drivelm_qa_covers_every_keyframe(nusc, synth_root):
    qa = json.loads((synth_root / "drivelm_qa.json").read_text())
    assert set(qa) == {s["token"] for s in nusc.scene}
    frames = {tok for scene in qa.values() for tok in scene["key_frames"]}
    assert frames == {s["token"] for s in nusc.sample}
    one = next(iter(next(iter(qa.values()))["key_frames"].values()))
    assert set(one["QA"]) == {"perception", "prediction", "planning", "behavior"}
    assert all({"Q", "A"} <= set(q) for qs in one["QA"].values() for q in qs)


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scenes": 0}, "scenes"),
        ({"scenes": 11}, "scenes"),
        ({"samples_per_scene": 1}, "samples_per_scene"),
        ({"image_width": 10}, "image_width"),
        ({"seed": -1}, "seed"),
        ({"scenes": 2, "scripts": (SceneScript(manoeuvre="left", speed=6.0),)}, "one SceneScript per scene"),
    ],
)
def test_bad_config_is_refused(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SynthConfig(out=tmp_path / "x", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"manoeuvre": "u-turn", "speed": 5.0}, "manoeuvre"),
        ({"manoeuvre": "straight", "speed": -1.0}, "speed"),
        ({"manoeuvre": "left", "speed": 30.0}, "speed"),
    ],
)
def test_bad_script_is_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SceneScript(**kwargs)


def test_non_empty_out_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        generate(SynthConfig(out=out, scenes=1, samples_per_scene=2, **TINY))
    assert (out / "keep.txt").exists()
    generate(SynthConfig(out=out, scenes=1, samples_per_scene=2, overwrite=True, **TINY))
    assert not (out / "keep.txt").exists()
    assert (out / "v1.0-mini" / "scene.json").exists()


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_synth_writes_a_dataset_and_refuses_a_full_folder(tmp_path, capsys):
    from netroller.cli.main import main

    out = tmp_path / "cli"
    args = [
        "data",
        "synth",
        "--out",
        str(out),
        "--scenes",
        "1",
        "--samples-per-scene",
        "2",
        "--width",
        "64",
        "--height",
        "36",
    ]
    assert main(args) == 0
    assert (out / "v1.0-mini" / "sample.json").exists()
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err


def test_output_does_not_depend_on_the_worker_count(tmp_path, monkeypatch):
    import netroller.data.synth.build as build

    cfg = {"scenes": 2, "samples_per_scene": 8, "seed": 4, **TINY}
    monkeypatch.setattr(build, "_worker_count", lambda n_jobs: 2)
    pooled = generate(SynthConfig(out=tmp_path / "pooled", **cfg))
    monkeypatch.setattr(build, "_worker_count", lambda n_jobs: 1)
    serial = generate(SynthConfig(out=tmp_path / "serial", **cfg))
    assert _tree_hashes(pooled) == _tree_hashes(serial)
