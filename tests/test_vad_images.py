"""VAD's camera image pipeline (`netroller.data.vad_images`) against outputs recorded from the official one.

The fixture (tests/fixtures/vad/image_pipeline_*, see its README) holds a tiny PNG and the official pipeline's
outputs on it, twice in a sample (N = 2), at scales 0.4 and 0.8: evaluation, and training with the
photometric distortion's draws replayed from `numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netroller.data.vad_images import (
    PhotoMetricConfig,
    load_bgr,
    load_vad_camera_inputs,
    normalize,
    pad_to_multiple,
    photometric_distortion,
    vad_camera_inputs,
)
from netroller.errors import ConfigError, DataError, MissingPathError
from netroller.models.vad.config import IMG_MEAN, IMG_STD

FIXTURES = Path(__file__).parent / "fixtures" / "vad"
IMAGE = FIXTURES / "image_pipeline_input.png"


@pytest.fixture(scope="module")
def official():
    return dict(np.load(FIXTURES / "image_pipeline_official.npz"))


def _run(official, scale: float, *, train: bool, seed: int = 0):
    return load_vad_camera_inputs(
        [IMAGE, IMAGE],
        official["lidar2img_input"],
        scale=scale,
        train=train,
        rng=np.random.default_rng(seed),
    )


@pytest.mark.parametrize("scale", [0.4, 0.8])
def test_normalise_scale_pad_equal_the_official(official, scale):
    out = _run(official, scale, train=False)
    expected = official[f"eval_{scale}/img"]
    assert out.images.dtype == np.float32 and out.images.shape == expected.shape
    np.testing.assert_array_equal(out.images, expected)
    np.testing.assert_array_equal(out.lidar_to_image, official[f"eval_{scale}/lidar2img"])
    assert {tuple(s) for s in official[f"eval_{scale}/img_shape"]} == {out.pad_shape}
    assert {tuple(s) for s in official[f"eval_{scale}/ori_shape"]} == {out.scaled_shape}


@pytest.mark.parametrize("scale", [0.4, 0.8])
@pytest.mark.parametrize("seed", [2, 4])
def test_training_distortion_equals_the_official_with_the_same_draws(official, scale, seed):
    out = _run(official, scale, train=True, seed=seed)
    np.testing.assert_array_equal(out.images, official[f"train_{scale}_seed{seed}/img"])


def test_padding_is_zero_at_the_bottom_and_right_to_a_multiple_of_32(official):
    out = _run(official, 0.8, train=False)  # 64x36 -> 51x28 -> padded to 64x32
    assert out.scaled_shape == (28, 51) and out.pad_shape == (32, 64)
    assert out.images.shape == (2, 3, 32, 64)
    assert not out.images[:, :, 28:].any() and not out.images[:, :, :, 51:].any()
    assert out.images[:, :, :28, :51].all()


def test_projection_rows_0_and_1_follow_the_scale():
    l2i = np.arange(32, dtype=np.float64).reshape(2, 4, 4)
    images = [np.zeros((90, 160, 3), np.uint8)] * 2
    out = vad_camera_inputs(images, l2i, scale=0.4, train=False)
    np.testing.assert_allclose(out.lidar_to_image[:, :2], 0.4 * l2i[:, :2])
    np.testing.assert_array_equal(out.lidar_to_image[:, 2:], l2i[:, 2:])


def test_normalise_turns_bgr_into_rgb_with_the_vad_statistics():
    bgr = np.array([[[10, 20, 30]]], np.uint8)
    rgb = normalize(bgr)
    np.testing.assert_allclose(rgb[0, 0], (np.array([30, 20, 10]) - IMG_MEAN) / np.array(IMG_STD), rtol=1e-6)


def test_distortion_only_in_training(official):
    evaluation = [_run(official, 0.4, train=False, seed=s).images for s in (2, 4)]
    np.testing.assert_array_equal(evaluation[0], evaluation[1])
    np.testing.assert_array_equal(evaluation[0], official["eval_0.4/img"])
    assert not np.array_equal(_run(official, 0.4, train=True, seed=2).images, evaluation[0])


def test_distortion_is_deterministic_for_a_seed_and_varies_with_it():
    img = load_bgr(IMAGE).astype(np.float32)
    cfg = PhotoMetricConfig()
    a = photometric_distortion(img, np.random.default_rng(5), cfg)
    b = photometric_distortion(img, np.random.default_rng(5), cfg)
    others = [photometric_distortion(img, np.random.default_rng(s), cfg) for s in range(6, 10)]
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, o) for o in others)
    np.testing.assert_array_equal(img, load_bgr(IMAGE).astype(np.float32))  # the input is left alone


def test_training_without_a_generator_is_refused():
    with pytest.raises(ConfigError, match="train=True needs rng"):
        vad_camera_inputs([np.zeros((9, 16, 3), np.uint8)], np.eye(4)[None], scale=0.4, train=True)


def test_images_of_different_sizes_are_refused():
    images = [np.zeros((9, 16, 3), np.uint8), np.zeros((10, 16, 3), np.uint8)]
    with pytest.raises(DataError, match="one \\(H, W, 3\\) shape"):
        vad_camera_inputs(images, np.tile(np.eye(4), (2, 1, 1)), scale=0.4, train=False)


def test_missing_and_unreadable_images_are_named(tmp_path):
    with pytest.raises(MissingPathError, match="camera image not found: .*nowhere.jpg"):
        load_bgr(tmp_path / "nowhere.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="bad.jpg: not a readable image"):
        load_bgr(bad)


def test_pad_leaves_a_multiple_of_32_unchanged():
    img = np.ones((64, 96, 3), np.float32)
    np.testing.assert_array_equal(pad_to_multiple(img), img)
