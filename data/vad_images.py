"""VAD's camera image pipeline in numpy + OpenCV: the camera images as the official VAD model gets them.

The official pipeline (VAD's configs, mmcv 1.x / mmdet3d 0.17 transforms), in its order:
1. Load each image with OpenCV as stored (BGR, uint8; `mmcv.imread(..., "unchanged")`), as float32.
2. Training only: photometric distortion, per image, each step drawn at random (probability 1/2):
   brightness (add a uniform delta), contrast (multiply; drawn to come before or after the HSV steps),
   saturation (multiply S) and hue (add to H, wrapped into [0, 360]) in OpenCV's float HSV, and a random
   channel permutation. Draws come from a numpy Generator here (the official code draws from numpy's
   global random state, in the same order with the same ranges).
3. Normalise: BGR -> RGB, subtract `IMG_MEAN`, multiply by 1 / `IMG_STD`, rounded as mmcv's OpenCV calls
   round (see `normalize`).
4. Scale each image by `scale` to (int(w * scale), int(h * scale)) with OpenCV's bilinear resize, and scale
   rows 0 and 1 of its lidar-to-image matrix by `scale`.
5. Pad with zeros at the bottom and right to a multiple of 32; the padded size becomes the image shape that
   the model normalises camera projections by.

`vad_camera_inputs` runs it on decoded images; `load_vad_camera_inputs` reads the files first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from netroller.errors import ConfigError, DataError, MissingPathError
from netroller.models.vad.config import IMG_MEAN, IMG_STD

SIZE_DIVISOR = 32


@dataclass(frozen=True, kw_only=True)
class PhotoMetricConfig:
    """Ranges of the training photometric distortion (the official defaults, which VAD's configs use)."""

    brightness_delta: float = 32.0
    """Brightness adds a delta drawn uniformly from [-brightness_delta, brightness_delta] (0-255 pixels)."""
    contrast_range: tuple[float, float] = (0.5, 1.5)
    """Contrast multiplies every channel by a factor drawn uniformly from this range."""
    saturation_range: tuple[float, float] = (0.5, 1.5)
    """Saturation multiplies the HSV S channel by a factor drawn uniformly from this range."""
    hue_delta: float = 18.0
    """Hue adds a delta in degrees drawn uniformly from [-hue_delta, hue_delta]."""

    def __post_init__(self) -> None:
        if not self.brightness_delta >= 0:
            raise ConfigError(
                f"PhotoMetricConfig.brightness_delta must be >= 0, got {self.brightness_delta!r}"
            )
        for name in ("contrast_range", "saturation_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ConfigError(
                    f"PhotoMetricConfig.{name} must be (low, high) with 0 <= low <= high, got {(lo, hi)}"
                )
        if not self.hue_delta >= 0:
            raise ConfigError(f"PhotoMetricConfig.hue_delta must be >= 0, got {self.hue_delta!r}")


@dataclass(frozen=True)
class CameraInputs:
    """One sample's camera images and projections, ready for the model."""

    images: np.ndarray  # (N, 3, H, W) float32: normalised RGB, scaled, zero-padded to `pad_shape`
    lidar_to_image: np.ndarray  # (N, 4, 4) float64: lidar frame -> pixels of the scaled images
    pad_shape: tuple[int, int]  # (H, W) of the padded images, a multiple of 32 each
    scaled_shape: tuple[int, int]  # (H, W) of the scaled images before padding


def load_bgr(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR, the pixels as stored (no EXIF rotation), as `mmcv.imread(..., "unchanged")`."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"camera image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: not a readable image (OpenCV cannot decode it)")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit 3-channel colour image, got {img.dtype} {img.shape}")
    return img


def photometric_distortion(img: np.ndarray, rng: np.random.Generator, cfg: PhotoMetricConfig) -> np.ndarray:
    """One (H, W, 3) float32 BGR image, distorted; draws from `rng` in the official order."""
    img = np.array(img, dtype=np.float32)  # a copy: the steps below work in place
    if rng.integers(2):
        img += rng.uniform(-cfg.brightness_delta, cfg.brightness_delta)
    contrast_last = rng.integers(2) == 0  # drawn once: contrast before the HSV steps, or after them
    if not contrast_last and rng.integers(2):
        img *= rng.uniform(*cfg.contrast_range)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)  # float input: H in degrees, S in [0, 1], V as the pixels
    if rng.integers(2):
        hsv[..., 1] *= rng.uniform(*cfg.saturation_range)
    if rng.integers(2):
        hue = hsv[..., 0]
        hue += rng.uniform(-cfg.hue_delta, cfg.hue_delta)
        hue[hue > 360] -= 360
        hue[hue < 0] += 360
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if contrast_last and rng.integers(2):
        img *= rng.uniform(*cfg.contrast_range)
    if rng.integers(2):
        img = img[..., rng.permutation(3)]
    return img


def normalize(
    img: np.ndarray, mean: Sequence[float] = IMG_MEAN, std: Sequence[float] = IMG_STD
) -> np.ndarray:
    """(H, W, 3) BGR -> (H, W, 3) float32 RGB, (x - mean) / std per channel.

    Rounded as mmcv's two OpenCV calls round: the mean is float32 (the official keeps it so) and the
    difference is a float32; 1 / std is taken in float64 from the float32 std and the product is formed in
    float64 (OpenCV multiplies by a float64 scalar) before rounding to float32: bit-exact with the official.
    """
    mean32 = np.asarray(mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(std, dtype=np.float32).astype(np.float64)
    centred = np.asarray(img, dtype=np.float32)[..., ::-1] - mean32  # float32, RGB
    return (centred.astype(np.float64) * inv_std).astype(np.float32)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(H, W) of an image scaled by `scale`: truncated, as the official `int(size * scale)`."""
    return int(height * scale), int(width * scale)


def rescale(img: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, C) -> (int(H * scale), int(W * scale), C), OpenCV bilinear."""
    h, w = scaled_size(img.shape[0], img.shape[1], scale)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def pad_to_multiple(img: np.ndarray, divisor: int = SIZE_DIVISOR) -> np.ndarray:
    """Zero-pad (H, W, C) at the bottom and right to the next multiples of `divisor`."""
    h, w = img.shape[:2]
    ph, pw = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    out = np.zeros((ph, pw, *img.shape[2:]), dtype=img.dtype)
    out[:h, :w] = img
    return out


def vad_camera_inputs(
    images: Sequence[np.ndarray],
    lidar_to_image: np.ndarray,
    *,
    scale: float,
    train: bool,
    rng: np.random.Generator | None = None,
    photometric: PhotoMetricConfig = PhotoMetricConfig(),
    mean: Sequence[float] = IMG_MEAN,
    std: Sequence[float] = IMG_STD,
    size_divisor: int = SIZE_DIVISOR,
) -> CameraInputs:
    """The official pipeline on N decoded (H, W, 3) BGR images (uint8 or float32) of one size.

    `lidar_to_image` (N, 4, 4) projects into the original pixels. `train` adds the photometric distortion,
    drawn from `rng` (required then; evaluation draws nothing).
    """
    if not scale > 0:
        raise ConfigError(f"scale must be > 0, got {scale!r}")
    if not (isinstance(size_divisor, int) and size_divisor > 0):
        raise ConfigError(f"size_divisor must be a positive integer, got {size_divisor!r}")
    if train and rng is None:
        raise ConfigError("train=True needs rng, the numpy Generator the photometric distortion draws from")
    lidar_to_image = np.asarray(lidar_to_image, dtype=np.float64)
    if lidar_to_image.shape != (len(images), 4, 4):
        raise DataError(f"lidar_to_image has shape {lidar_to_image.shape}, expected ({len(images)}, 4, 4)")
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
        raise DataError(f"expected camera images of one (H, W, 3) shape, got {sorted(shapes)}")

    out = []
    for img in images:
        img = np.asarray(img).astype(np.float32)  # a float32 copy
        if train:
            img = photometric_distortion(img, rng, photometric)
        img = rescale(normalize(img, mean, std), scale)
        out.append(pad_to_multiple(img, size_divisor))
    scaled_shape = scaled_size(images[0].shape[0], images[0].shape[1], scale)
    # Rows 0 and 1 (u, v) follow the image scale; depth and the homogeneous row do not.
    scaling = np.diag([scale, scale, 1.0, 1.0])
    return CameraInputs(
        images=np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2)),  # (N, H, W, 3) -> (N, 3, H, W)
        lidar_to_image=scaling @ lidar_to_image,
        pad_shape=(int(out[0].shape[0]), int(out[0].shape[1])),
        scaled_shape=scaled_shape,
    )


def load_vad_camera_inputs(
    paths: Sequence[Path], lidar_to_image: np.ndarray, *, scale: float, train: bool, **kwargs
) -> CameraInputs:
    """`vad_camera_inputs` on the images read from `paths` (BGR as stored)."""
    return vad_camera_inputs([load_bgr(p) for p in paths], lidar_to_image, scale=scale, train=train, **kwargs)
