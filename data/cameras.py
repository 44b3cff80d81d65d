"""A sample's camera images as the GM reads them: the 6 keyframe JPEGs, decoded to RGB, in CAMERAS order.

Used by the harvest and by online latents (the GM in the training loop); VAD's own image pipeline, BGR as
stored and normalised, is `netroller.data.vad_images`.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from netroller.data.index import CAMERAS, SampleRecord
from netroller.errors import DataError


def load_camera_images(record: SampleRecord, dataroot: Path) -> list[Image.Image]:
    """The sample's 6 camera images as RGB, in CAMERAS order; DataError naming the camera and path."""
    images = []
    for cam, rel in zip(CAMERAS, record.cam_paths, strict=True):
        path = Path(dataroot) / rel
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except FileNotFoundError as err:
            raise DataError(f"{cam} image missing: {path}") from err
        except (UnidentifiedImageError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"{cam} image unreadable: {path} ({reason})") from err
    return images
