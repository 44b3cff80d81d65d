"""The `prepare` stage: one index row per keyframe in VAD's conventions, and clear errors on bad inputs."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from netroller.data.index import CAMERAS, MAP_CLASSES, MAP_POINTS, read_index
from netroller.errors import ConfigError, DataError, MissingPathError
from netroller.stages.prepare import PrepareConfig, command_from_future, prepare

STRAIGHT, LEFT, RIGHT = 0, 1, 2  # scene positions in the scripted dataset
SCRIPTED_SAMPLES = 10


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """Three scenes scripted straight / left / right at 10 m/s, and their index."""
    from netroller.data.synth import SceneScript, SynthConfig, generate

    base = tmp_path_factory.mktemp("scripted")
    root = generate(
        SynthConfig(
            out=base / "nuscenes",
            scenes=3,
            samples_per_scene=SCRIPTED_SAMPLES,
            seed=1,
            scripts=(
                SceneScript(manoeuvre="straight", speed=10.0),
                SceneScript(manoeuvre="left", speed=10.0),
                SceneScript(manoeuvre="right", speed=10.0),
            ),
        )
    )
    index = read_index(prepare(PrepareConfig(dataroot=root, version="v1.0-mini", out=base / "index.parquet")))
    scenes: dict[str, list] = {}
    for rec in index:
        scenes.setdefault(rec.scene_token, []).append(rec)
    return root, list(scenes.values())


def _copy_dataset(src: Path, dst: Path) -> Path:
    """A copy of a dataset made of hard links (cheap); unlink a file before changing it."""

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)
    return dst


def _assert_no_output(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()] if out.parent.exists() else []
    assert not [n for n in leftovers if n.startswith(f".{out.name}")], leftovers


# -- rows and splits ------------------------------------------------------------------------------------------


def test_one_row_per_keyframe_with_devkit_splits(index_path, nusc):
    from nuscenes.utils.splits import create_splits_scenes

    index = read_index(index_path)
    assert len(index) == len(nusc.sample)
    assert {r.sample_token for r in index} == {s["token"] for s in nusc.sample}
    devkit = create_splits_scenes()
    for rec in index:
        expected = "train" if rec.scene_name in devkit["mini_train"] else "val"
        assert rec.scene_name in devkit["mini_train"] + devkit["mini_val"]
        assert rec.split == expected
    assert {r.split for r in index} == {"train", "val"}


def test_rows_follow_each_scene_in_time_order(index_path, nusc):
    index = read_index(index_path)
    for scene in nusc.scene:
        rows = [r for r in index if r.scene_token == scene["token"]]
        assert [r.frame_index for r in rows] == list(range(scene["nbr_samples"]))
        assert all(a.timestamp < b.timestamp for a, b in zip(rows, rows[1:], strict=False))
        assert index.scene_neighbour(rows[0].sample_token, 1) is rows[1]


def test_camera_paths_are_relative_and_in_vad_order(index_path, synth_root, nusc):
    for rec in read_index(index_path):
        sample = nusc.get("sample", rec.sample_token)
        for cam, rel in zip(CAMERAS, rec.cam_paths, strict=True):
            assert not Path(rel).is_absolute()
            assert rel == nusc.get("sample_data", sample["data"][cam])["filename"]
            assert (synth_root / rel).is_file()


# -- ego trajectory and command ---------------------------------------------------------------------------


def test_straight_scene_future_is_five_metres_per_step(scripted):
    _, scenes = scripted
    n = SCRIPTED_SAMPLES
    steps = np.stack([np.zeros(6), 5.0 * np.arange(1, 7)], axis=1)
    for rec in scenes[STRAIGHT]:
        valid = min(6, n - 1 - rec.frame_index)
        np.testing.assert_array_equal(rec.ego_fut_mask, [1.0] * valid + [0.0] * (6 - valid))
        np.testing.assert_allclose(rec.ego_fut_traj[:valid], steps[:valid], atol=1e-3)
    assert scenes[STRAIGHT][0].ego_fut_mask.all()
    assert not scenes[STRAIGHT][-1].ego_fut_mask.any()


def test_straight_scene_history_and_velocity(scripted):
    _, scenes = scripted
    for rec in scenes[STRAIGHT]:
        np.testing.assert_allclose(rec.ego_velocity, [0.0, 10.0], atol=1e-2)
        known = min(2, rec.frame_index)
        np.testing.assert_array_equal(rec.ego_his_mask, [0.0] * (2 - known) + [1.0] * known)
        # Known steps and VAD's constant-velocity fill agree on a straight constant-speed scene.
        np.testing.assert_allclose(rec.ego_his_traj, [[0.0, -10.0], [0.0, -5.0]], atol=1e-3)


def test_scripted_manoeuvres_give_their_commands(scripted):
    _, scenes = scripted
    straight = {r.command for r in scenes[STRAIGHT]}
    left = [r.command for r in scenes[LEFT]]
    right = [r.command for r in scenes[RIGHT]]
    assert straight == {2}
    assert 1 in left and 0 not in left
    assert 0 in right and 1 not in right


def test_command_uses_last_valid_future_position():
    fut = np.array([[0.5, 5], [3.0, 9], [3.0, 9], [3.0, 9], [3.0, 9], [3.0, 9]], dtype=float)
    assert command_from_future(fut, np.array([1, 1, 0, 0, 0, 0])) == 0
    assert command_from_future(fut, np.array([1, 0, 0, 0, 0, 0])) == 2
    assert command_from_future(-fut, np.ones(6)) == 1
    assert command_from_future(np.zeros((6, 2)), np.zeros(6)) == 2


# -- boxes and agents -----------------------------------------------------------------------------------------


def test_boxes_project_into_their_images(index_path):
    index = read_index(index_path)
    with_boxes = [r for r in index if r.num_boxes]
    assert with_boxes
    for rec in with_boxes:
        proj = rec.lidar_to_image()  # (6, 4, 4)
        centres = np.concatenate([rec.gt_boxes[:, :3], np.ones((rec.num_boxes, 1))], axis=1)
        inside = False
        for cam in range(len(CAMERAS)):
            pix = centres @ proj[cam].T  # (N, 4)
            depth = pix[:, 2]
            uv = pix[:, :2] / np.maximum(depth[:, None], 1e-6)
            w, h = rec.cam_image_sizes[cam]
            ok = (depth > 0.5) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
            inside |= bool(ok.any())
        assert inside, f"no box of sample {rec.sample_token} projects inside any camera image"


def test_boxes_are_valid_detection_objects(index_path, nusc):
    from nuscenes.eval.detection.utils import category_to_detection_name

    for rec in read_index(index_path):
        sample = nusc.get("sample", rec.sample_token)
        anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
        kept = [
            a
            for a in anns
            if category_to_detection_name(a["category_name"]) and a["num_lidar_pts"] + a["num_radar_pts"] > 0
        ]
        assert rec.gt_instance_tokens == tuple(a["instance_token"] for a in kept)
        np.testing.assert_array_equal(rec.gt_num_lidar_pts, [a["num_lidar_pts"] for a in kept])
        assert np.isfinite(rec.gt_boxes).all()


def test_non_detection_categories_are_dropped(index_path, synth_root, tmp_path):
    victim = next(r for r in read_index(index_path) if r.num_boxes).gt_instance_tokens[0]
    root = _copy_dataset(synth_root, tmp_path / "copy")
    tables = root / "v1.0-mini"
    categories = json.loads((tables / "category.json").read_text())
    animal = next(c["token"] for c in categories if c["name"] == "animal")
    instances = json.loads((tables / "instance.json").read_text())
    next(i for i in instances if i["token"] == victim)["category_token"] = animal
    (tables / "instance.json").unlink()  # a hard link to the original: replace, do not edit
    (tables / "instance.json").write_text(json.dumps(instances))
    index = read_index(prepare(PrepareConfig(dataroot=root, out=tmp_path / "index.parquet")))
    assert all(victim not in r.gt_instance_tokens for r in index)
    assert any(r.num_boxes for r in index)


def test_parked_agent_future_is_zero(index_path, nusc):
    parked = set()
    for inst in nusc.instance:
        token, positions = inst["first_annotation_token"], []
        while token:
            ann = nusc.get("sample_annotation", token)
            positions.append(ann["translation"])
            token = ann["next"]
        if len(positions) > 1 and np.ptp(np.asarray(positions), axis=0).max() < 1e-6:
            parked.add(inst["token"])
    assert parked, "the synthetic set has no parked (static) agent"
    checked = 0
    for rec in read_index(index_path):
        for i, inst in enumerate(rec.gt_instance_tokens):
            if inst in parked:
                np.testing.assert_allclose(rec.gt_fut_traj[i], 0.0, atol=1e-3)
                np.testing.assert_allclose(rec.gt_boxes[i, 7:9], 0.0, atol=1e-3)
                checked += 1
    assert checked


def test_agent_future_masks_end_with_the_track(index_path, nusc):
    for rec in read_index(index_path):
        sample = nusc.get("sample", rec.sample_token)
        by_instance = {nusc.get("sample_annotation", t)["instance_token"]: t for t in sample["anns"]}
        for i, inst in enumerate(rec.gt_instance_tokens):
            token, steps = nusc.get("sample_annotation", by_instance[inst])["next"], 0
            while token and steps < 6:
                steps += 1
                token = nusc.get("sample_annotation", token)["next"]
            np.testing.assert_array_equal(rec.gt_fut_mask[i], [1.0] * steps + [0.0] * (6 - steps))


# -- map ----------------------------------------------------------------------------------------------------


def test_map_vectors_lie_in_the_patch_with_all_classes(index_path):
    labels = set()
    for rec in read_index(index_path):
        assert rec.map_vectors.shape[1:] == (MAP_POINTS, 2)
        assert rec.map_vectors.shape[0] == rec.map_labels.shape[0]
        assert (np.abs(rec.map_vectors[..., 0]) <= 15.0 + 1e-3).all()
        assert (np.abs(rec.map_vectors[..., 1]) <= 30.0 + 1e-3).all()
        labels |= set(rec.map_labels.tolist())
    assert labels == set(range(len(MAP_CLASSES)))


def test_map_elements_are_resampled_evenly_along_their_length():
    from shapely.geometry import LineString

    from netroller.data.map_vectors import resample

    # An L of total length 19: 20 points land every 1 m of arc, the corner among them.
    pts = resample(LineString([(0, 0), (10, 0), (10, 9)]), MAP_POINTS)
    expected = [(min(d, 10.0), max(d - 10.0, 0.0)) for d in range(20)]
    np.testing.assert_allclose(pts, expected, atol=1e-9)


# -- CAN bus ------------------------------------------------------------------------------------------------


def test_can_bus_vector_equals_a_hand_computation(index_path, synth_root, nusc):
    index = read_index(index_path)
    rec = max(index, key=lambda r: abs(r.can_bus[12]))  # a sample in a turn, if there is one
    msgs = json.loads((synth_root / "can_bus" / f"{rec.scene_name}_pose.json").read_text())
    # VAD's converter keeps accel, rotation_rate and vel of the first message after the sample.
    after = next(m for m in msgs if m["utime"] > rec.timestamp)
    sample = nusc.get("sample", rec.sample_token)
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    w, x, y, z = pose["rotation"]
    yaw = math.degrees(math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))) % 360
    expected = [*pose["translation"], w, w, w, w, *after["accel"], *after["rotation_rate"], *after["vel"]]
    expected += [math.radians(yaw), yaw]
    assert rec.can_bus.dtype == np.float64
    np.testing.assert_allclose(rec.can_bus, expected, rtol=0, atol=1e-9)
    assert index.meta.scenes_without_can_bus == ()
    assert Path(index.meta.can_bus_dir) == (synth_root / "can_bus").resolve()


def test_converter_takes_motion_from_the_first_message_after_the_sample():
    from netroller.data.can_bus import converter_can_bus

    msgs = [
        {"utime": t, "pos": [k, 0, 0], "orientation": [k, 0, 0, 0], "accel": [k, 1, 2],
         "rotation_rate": [k, 3, 4], "vel": [k, 5, 6]}
        for k, t in enumerate((100, 200, 300))
    ]  # fmt: skip

    def picked(t):
        v = converter_can_bus(msgs, t)
        return v[0], v[7], v[16:].tolist()

    assert picked(250) == (1, 2, [0, 0])  # pos from the one before, motion from the one after
    assert picked(200) == (1, 2, [0, 0])  # a message at the sample's time counts as before
    assert picked(50) == (0, 0, [0, 0])  # none before: the first for both
    assert picked(900) == (2, 2, [0, 0])  # none after: the last for both
    np.testing.assert_array_equal(converter_can_bus(None, 250), np.zeros(18))


def test_scene_without_can_bus_file_gets_zeros_and_is_reported(synth_root, tmp_path, capsys):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    victim = sorted((root / "can_bus").glob("*_pose.json"))[1]
    scene_name = victim.name.removesuffix("_pose.json")
    victim.unlink()
    index = read_index(prepare(PrepareConfig(dataroot=root, out=tmp_path / "index.parquet")))
    assert index.meta.scenes_without_can_bus == (scene_name,)
    for rec in index:
        if rec.scene_name == scene_name:
            np.testing.assert_array_equal(rec.can_bus[7:16], 0.0)
            assert rec.can_bus[0] != 0.0 and rec.can_bus[-1] > 0.0  # the ego pose and angle are still there
        else:
            assert rec.can_bus[13] > 0.0  # forward speed
    err = capsys.readouterr().err
    assert f"1 of 4 scenes without data (zeros): {scene_name}" in err


def test_dataroot_without_can_bus_folder_gives_zeros_for_every_scene(synth_root, tmp_path, capsys):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    shutil.rmtree(root / "can_bus")
    index = read_index(prepare(PrepareConfig(dataroot=root, out=tmp_path / "index.parquet")))
    assert len(index.meta.scenes_without_can_bus) == 4 and index.meta.can_bus_dir == ""
    assert all(not r.can_bus[7:16].any() for r in index)
    assert "no can_bus/ folder found: all 4 scenes without CAN-bus data" in capsys.readouterr().err


def test_can_bus_folder_beside_the_dataroot_is_found(synth_root, tmp_path):
    """VAD's layout: data/can_bus next to data/nuscenes."""
    root = _copy_dataset(synth_root, tmp_path / "data" / "nuscenes")
    (root / "can_bus").rename(tmp_path / "data" / "can_bus")
    index = read_index(prepare(PrepareConfig(dataroot=root, out=tmp_path / "index.parquet")))
    assert Path(index.meta.can_bus_dir) == (tmp_path / "data" / "can_bus").resolve()
    assert index.meta.scenes_without_can_bus == ()


def test_missing_can_bus_root_is_named(synth_root, tmp_path):
    with pytest.raises(MissingPathError, match="CAN-bus folder not found: .*elsewhere/can_bus"):
        prepare(
            PrepareConfig(
                dataroot=synth_root, out=tmp_path / "i.parquet", can_bus_root=tmp_path / "elsewhere"
            )
        )


def test_broken_pose_file_is_named(synth_root, tmp_path):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    victim = sorted((root / "can_bus").glob("*_pose.json"))[0]
    victim.unlink()
    victim.write_text("[{")
    with pytest.raises(DataError, match=f"{victim.name}: not valid JSON"):
        prepare(PrepareConfig(dataroot=root, out=tmp_path / "index.parquet"))


def test_scenes_the_devkit_lists_without_can_bus_get_none(tmp_path):
    from netroller.data.can_bus import PoseMessages

    (tmp_path / "can_bus").mkdir()
    for name in ("scene-0161", "scene-0001"):  # 161 is on the devkit's can_blacklist
        (tmp_path / "can_bus" / f"{name}_pose.json").write_text(
            json.dumps([{"utime": 0, "pos": [0] * 3, "orientation": [1, 0, 0, 0], "accel": [0] * 3,
                         "rotation_rate": [0] * 3, "vel": [1, 0, 0]}])
        )  # fmt: skip
    messages = PoseMessages(tmp_path / "can_bus")
    assert messages.get("scene-0161") is None
    assert messages.get("scene-0001")[0]["vel"] == [1, 0, 0]
    assert messages.get("not-a-scene") is None and messages.get("scene-0002") is None


def test_index_of_an_older_format_is_refused(tmp_path):
    from netroller.data.index import IndexMeta, bare_record, write_index

    out = tmp_path / "old.parquet"
    rec = bare_record(sample_token="a", scene_token="s", frame_index=0)
    write_index([rec], out, IndexMeta(dataroot=str(tmp_path), version="v1.0-mini", format_version=1))
    with pytest.raises(
        DataError, match="index format version 1 is not supported .*re-run `netroller prepare`"
    ):
        read_index(out)


# -- re-runs ------------------------------------------------------------------------------------------------


def test_no_overwrite_keeps_a_matching_index_and_refuses_another(index_path, synth_root, tmp_path):
    out = tmp_path / "index.parquet"
    shutil.copy(index_path, out)
    before = out.stat().st_mtime_ns
    assert prepare(PrepareConfig(dataroot=synth_root, out=out, overwrite=False)) == out
    assert out.stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="dataroot"):
        prepare(PrepareConfig(dataroot=tmp_path, out=out, overwrite=False))


# -- bad inputs -----------------------------------------------------------------------------------------------


def test_missing_dataroot_is_named(tmp_path):
    out = tmp_path / "index.parquet"
    with pytest.raises(MissingPathError, match="dataroot not found: .*nowhere"):
        prepare(PrepareConfig(dataroot=tmp_path / "nowhere", out=out))
    _assert_no_output(out)


def test_missing_version_folder_is_named(synth_root, tmp_path):
    out = tmp_path / "index.parquet"
    with pytest.raises(MissingPathError, match="version folder not found: .*v1.0-trainval"):
        prepare(PrepareConfig(dataroot=synth_root, version="v1.0-trainval", out=out))
    _assert_no_output(out)


def test_unknown_version_is_a_config_error(synth_root, tmp_path):
    with pytest.raises(ConfigError, match="version: 'v2.0'"):
        PrepareConfig(dataroot=synth_root, version="v2.0", out=tmp_path / "index.parquet")


def test_missing_table_file_is_named(synth_root, tmp_path):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    (root / "v1.0-mini" / "sample_annotation.json").unlink()
    out = tmp_path / "index.parquet"
    with pytest.raises(MissingPathError, match="table not found: .*sample_annotation.json"):
        prepare(PrepareConfig(dataroot=root, out=out))
    _assert_no_output(out)


def test_broken_table_json_is_named(synth_root, tmp_path):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    table = root / "v1.0-mini" / "ego_pose.json"
    table.unlink()
    table.write_text("[{")
    out = tmp_path / "index.parquet"
    with pytest.raises(DataError, match="ego_pose.json: not valid JSON"):
        prepare(PrepareConfig(dataroot=root, out=out))
    _assert_no_output(out)


def test_missing_map_expansion_file_is_named(synth_root, tmp_path):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    maps = sorted((root / "maps" / "expansion").glob("*.json"))
    assert maps
    for path in maps:
        path.unlink()
    out = tmp_path / "index.parquet"
    with pytest.raises(MissingPathError, match=f"map expansion file not found: .*{maps[0].parent.name}"):
        prepare(PrepareConfig(dataroot=root, out=out))
    _assert_no_output(out)


def _first_front_image(root: Path) -> Path:
    sample_data = json.loads((root / "v1.0-mini" / "sample_data.json").read_text())
    rel = next(sd["filename"] for sd in sample_data if sd["is_key_frame"] and "/CAM_FRONT/" in sd["filename"])
    return root / rel


def test_missing_camera_image_is_named(synth_root, tmp_path):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    image = _first_front_image(root)
    image.unlink()
    out = tmp_path / "index.parquet"
    with pytest.raises(MissingPathError, match=f"camera image not found: .*{re.escape(image.name)}"):
        prepare(PrepareConfig(dataroot=root, out=out))
    _assert_no_output(out)


def test_corrupt_camera_image_is_named(synth_root, tmp_path):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    image = _first_front_image(root)
    image.unlink()
    image.write_bytes(b"this is not a jpeg")
    out = tmp_path / "index.parquet"
    with pytest.raises(DataError, match=f"not a readable image: .*{re.escape(image.name)}"):
        prepare(PrepareConfig(dataroot=root, out=out))
    _assert_no_output(out)


def test_failed_rerun_keeps_the_previous_index(index_path, synth_root, tmp_path):
    root = _copy_dataset(synth_root, tmp_path / "copy")
    _first_front_image(root).unlink()
    out = tmp_path / "index.parquet"
    shutil.copy(index_path, out)
    before = out.read_bytes()
    with pytest.raises(MissingPathError):
        prepare(PrepareConfig(dataroot=root, out=out))
    assert out.read_bytes() == before


# -- CLI ----------------------------------------------------------------------------------------------------


def test_cli_help_shows_an_example(capsys):
    from netroller.cli.main import main

    assert main(["prepare", "--help"]) == 0
    assert "netroller prepare --dataroot" in capsys.readouterr().out


def test_cli_writes_the_index(synth_root, tmp_path, capsys):
    from netroller.cli.main import main

    out = tmp_path / "index.parquet"
    code = main(["prepare", "--dataroot", str(synth_root), "--version", "v1.0-mini", "--out", str(out)])
    assert code == 0
    assert len(read_index(out)) > 0


def test_cli_reports_a_missing_dataroot_in_one_line(tmp_path, capsys):
    from netroller.cli.main import main

    code = main(["prepare", "--dataroot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "i.parquet")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nuScenes dataroot not found") and "\n" not in err
