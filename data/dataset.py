"""The training/eval dataset: index records + the 6 camera JPEGs -> `Sample`s, and `collate` -> `Batch`.

Images are resized to the recipe's (width, height) and ImageNet-normalized; `lidar_to_image` is scaled to the
resized pixels. Targets keep only boxes whose centre lies in the BEV range (VAD filters the same way); their
futures and the map vectors come from the record unchanged.

Samples with a missing, truncated or undecodable camera image are left out up front (`SampleDataset.unreadable`
lists them with the reason), so one damaged file does not stop a training or evaluation run; the stages log the
count. A split with no readable sample at all is an error (a wrong dataroot fails fast, naming a path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from netroller.data.index import Index, SampleRecord
from netroller.errors import DataError, MissingPathError
from netroller.models.vad.batch import Batch, VADInputs, VADTargets
from netroller.models.vad.config import VAD_PC_RANGE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Sample:
    """One sample's tensors, unbatched."""

    sample_token: str
    images: Tensor  # [6, 3, H, W]
    lidar_to_image: Tensor  # [6, 4, 4]
    command: int
    ego_velocity: Tensor  # [2]
    boxes: Tensor  # [N, 9]
    labels: Tensor  # [N]
    agent_fut_traj: Tensor  # [N, 6, 2]
    agent_fut_mask: Tensor  # [N, 6]
    map_vectors: Tensor  # [M, 20, 2]
    map_labels: Tensor  # [M]
    ego_fut_traj: Tensor  # [6, 2]
    ego_fut_mask: Tensor  # [6]


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One JPEG, resized to (width, height), ImageNet-normalized, [3, H, W] float32."""
    if not path.is_file():
        raise MissingPathError(f"camera image not found: {path}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize(size, Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except OSError as err:
        raise DataError(f"{path}: not a readable image ({err})") from err
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return arr.transpose(2, 0, 1).astype(np.float32)


def image_problem(path: Path) -> str | None:
    """Why the camera image at `path` cannot be used, or None when it can.

    Cheap for an intact JPEG (header + end-of-image marker: a few small reads, not a decode); any other file,
    or a JPEG without its end marker (truncated), is decoded (JPEG at 1/8 scale) to be sure.
    """
    if not path.is_file():
        return f"camera image not found: {path}"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG" and _has_jpeg_end(path):
                return None
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"{path}: not a readable image ({err})"
    return None


def _has_jpeg_end(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        return b"\xff\xd9" in f.read()  # EOI, possibly followed by a little padding


def resized_lidar_to_image(record: SampleRecord, size: tuple[int, int]) -> np.ndarray:
    """(6, 4, 4) lidar -> pixels of the images resized to `size` (width, height)."""
    out = record.lidar_to_image()
    for i, (w, h) in enumerate(record.cam_image_sizes):
        scale = np.diag([size[0] / w, size[1] / h, 1.0, 1.0])
        out[i] = scale @ out[i]
    return out.astype(np.float32)


def in_range(boxes: np.ndarray, pc_range: tuple[float, ...]) -> np.ndarray:
    """(N,) bool: box centre inside the x, y range."""
    x0, y0, _, x1, y1, _ = pc_range
    return (boxes[:, 0] >= x0) & (boxes[:, 0] <= x1) & (boxes[:, 1] >= y0) & (boxes[:, 1] <= y1)


class SampleDataset(Dataset):
    """The records of one split of an index, read with their camera images."""

    def __init__(
        self,
        index: Index,
        split: str,
        *,
        image_size: tuple[int, int],
        dataroot: Path | None = None,
        pc_range: tuple[float, ...] = VAD_PC_RANGE,
        max_samples: int | None = None,
    ):
        self.records = index.split(split)
        if max_samples is not None:
            self.records = self.records[:max_samples]
        if not self.records:
            raise DataError(f"{index.path}: split {split!r} has no samples")
        self.root = index.dataroot(dataroot)
        self.unreadable: list[tuple[str, str]] = []
        """(sample_token, reason) of the samples left out because a camera image cannot be read."""
        readable = []
        for r in self.records:
            problem = next(filter(None, (image_problem(self.root / p) for p in r.cam_paths)), None)
            if problem is None:
                readable.append(r)
            else:
                self.unreadable.append((r.sample_token, problem))
        if not readable:
            raise DataError(
                f"{index.path}: no sample of split {split!r} has readable camera images, e.g. {self.unreadable[0][1]}"
            )
        self.records = readable
        self.image_size = tuple(image_size)
        self.pc_range = tuple(pc_range)

    def __len__(self) -> int:
        return len(self.records)

    def unreadable_note(self) -> str | None:
        """One log line when samples were left out for unreadable images (None when none were)."""
        if not self.unreadable:
            return None
        n, total = len(self.unreadable), len(self.unreadable) + len(self.records)
        return (
            f"skipping {n} of {total} samples with unreadable camera images (first: {self.unreadable[0][1]})"
        )

    def __getitem__(self, i: int) -> Sample:
        r = self.records[i]
        images = np.stack([load_image(self.root / p, self.image_size) for p in r.cam_paths])
        keep = in_range(r.gt_boxes, self.pc_range)

        def t(a: np.ndarray, dtype=torch.float32) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

        return Sample(
            sample_token=r.sample_token,
            images=t(images),
            lidar_to_image=t(resized_lidar_to_image(r, self.image_size)),
            command=int(r.command),
            ego_velocity=t(r.ego_velocity),
            boxes=t(r.gt_boxes[keep]),
            labels=t(r.gt_labels[keep], torch.long),
            agent_fut_traj=t(r.gt_fut_traj[keep]),
            agent_fut_mask=t(r.gt_fut_mask[keep]),
            map_vectors=t(r.map_vectors),
            map_labels=t(r.map_labels, torch.long),
            ego_fut_traj=t(r.ego_fut_traj),
            ego_fut_mask=t(r.ego_fut_mask),
        )


def collate(samples: list[Sample]) -> Batch:
    """Stack the fixed-shape fields; keep the per-sample ones (boxes, map vectors) as lists."""
    inputs = VADInputs(
        images=torch.stack([s.images for s in samples]),
        lidar_to_image=torch.stack([s.lidar_to_image for s in samples]),
        command=torch.tensor([s.command for s in samples], dtype=torch.long),
        ego_velocity=torch.stack([s.ego_velocity for s in samples]),
    )
    targets = VADTargets(
        boxes=[s.boxes for s in samples],
        labels=[s.labels for s in samples],
        agent_fut_traj=[s.agent_fut_traj for s in samples],
        agent_fut_mask=[s.agent_fut_mask for s in samples],
        map_vectors=[s.map_vectors for s in samples],
        map_labels=[s.map_labels for s in samples],
        ego_fut_traj=torch.stack([s.ego_fut_traj for s in samples]),
        ego_fut_mask=torch.stack([s.ego_fut_mask for s in samples]),
    )
    return Batch(inputs=inputs, targets=targets, sample_tokens=[s.sample_token for s in samples])
