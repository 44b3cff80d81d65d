"""The training/eval dataset: index records + the 6 camera JPEGs -> `Sample`s, and `collate` -> `Batch`, in
the official VAD's conventions.

Images go through VAD's pipeline (`netroller.data.vad_images`: BGR as stored, photometric distortion in
training, `img_norm_cfg` normalisation, scaling, zero padding to a multiple of 32). A training sample also
carries its history queue (`netroller.data.history`), each frame through the same pipeline. Targets follow
VAD's training pipeline: boxes with lidar points, of the detection classes, with centres strictly inside
the BEV range; boxes, futures and the ego plan are turned into the official conventions
(`netroller.models.vad.targets`).

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

from netroller.data.history import history_positions
from netroller.data.index import Index, SampleRecord
from netroller.data.vad_images import load_vad_camera_inputs
from netroller.errors import DataError
from netroller.models.vad.batch import Batch, VADInputs
from netroller.models.vad.config import VADConfig
from netroller.models.vad.detector import CameraFrame
from netroller.models.vad.map_targets import MapGT, prepare_map_gt
from netroller.models.vad.targets import VADTargets, vad_yaw


@dataclass
class FrameArrays:
    """One frame's model inputs, unbatched."""

    images: Tensor  # [6, 3, H, W]
    lidar2img: Tensor  # [6, 4, 4]
    can_bus: Tensor  # [18] float64


@dataclass
class Sample:
    """One sample's tensors, unbatched, in the official conventions."""

    sample_token: str
    scene_token: str
    frame: FrameArrays
    history: list[FrameArrays]  # oldest first; [] at evaluation
    command: int
    boxes: Tensor  # [N, 9] x, y, z (centre), w, l, h, VAD yaw, vx, vy
    labels: Tensor  # [N]
    agent_fut_trajs: Tensor  # [N, 6, 2] per-step offsets
    agent_fut_masks: Tensor  # [N, 6]
    map: MapGT
    ego_fut_trajs: Tensor  # [6, 2] per-step offsets
    ego_fut_masks: Tensor  # [6]


def step_offsets(positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(..., T, 2) positions -> per-step offsets from the previous position (the origin first), 0 where the
    step is masked (the official converter's futures)."""
    prev = np.concatenate([np.zeros_like(positions[..., :1, :]), positions[..., :-1, :]], axis=-2)
    return np.where(np.asarray(mask)[..., None] > 0.5, positions - prev, 0.0)


def training_boxes(record: SampleRecord, pc_range: tuple[float, ...]) -> np.ndarray:
    """(N,) bool: the boxes VAD trains on: with lidar points, centre strictly inside the x, y range."""
    x0, y0, _, x1, y1, _ = pc_range
    b = record.gt_boxes
    inside = (b[:, 0] > x0) & (b[:, 0] < x1) & (b[:, 1] > y0) & (b[:, 1] < y1)
    return inside & (record.gt_num_lidar_pts > 0)


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


class SampleDataset(Dataset):
    """The records of one split of an index, read with their camera images.

    `train`: photometric distortion and a history queue of `queue_length - 1` earlier frames, both drawn
    from a generator seeded by (seed, epoch, sample), so an epoch's data depends only on those
    (`set_epoch`)."""

    def __init__(
        self,
        index: Index,
        split: str,
        *,
        vad: VADConfig,
        train: bool,
        dataroot: Path | None = None,
        max_samples: int | None = None,
        seed: int = 0,
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
        self.vad = vad
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def unreadable_note(self) -> str | None:
        """One log line when samples were left out for unreadable images (None when none were)."""
        if not self.unreadable:
            return None
        n, total = len(self.unreadable), len(self.unreadable) + len(self.records)
        return (
            f"skipping {n} of {total} samples with unreadable camera images (first: {self.unreadable[0][1]})"
        )

    def _frame(self, r: SampleRecord, rng: np.random.Generator | None) -> FrameArrays:
        cams = load_vad_camera_inputs(
            [self.root / p for p in r.cam_paths],
            r.lidar_to_image(),
            scale=self.vad.image_scale,
            train=self.train,
            rng=rng,
        )
        return FrameArrays(
            images=torch.from_numpy(cams.images),
            lidar2img=torch.from_numpy(cams.lidar_to_image.astype(np.float32)),
            can_bus=torch.from_numpy(np.asarray(r.can_bus, dtype=np.float64)),
        )

    def __getitem__(self, i: int) -> Sample:
        r = self.records[i]
        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.train else None
        history = []
        if self.train:
            positions = history_positions(self.records, i, self.vad.queue_length, rng)
            history = [self._frame(self.records[j], rng) for j in positions]
        keep = training_boxes(r, self.vad.pc_range)
        boxes = r.gt_boxes[keep].astype(np.float64).copy()
        boxes[:, 6] = vad_yaw(boxes[:, 6])
        fut_mask = r.gt_fut_mask[keep]

        def t(a: np.ndarray, dtype=torch.float32) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

        return Sample(
            sample_token=r.sample_token,
            scene_token=r.scene_token,
            frame=self._frame(r, rng),
            history=history,
            command=int(r.command),
            boxes=t(boxes),
            labels=t(r.gt_labels[keep], torch.long),
            agent_fut_trajs=t(step_offsets(r.gt_fut_traj[keep], fut_mask)),
            agent_fut_masks=t(fut_mask),
            map=prepare_map_gt(
                list(r.map_vectors),
                [int(c) for c in r.map_labels],
                num_pts=self.vad.map_num_pts,
                pc_range=self.vad.pc_range,
            ),  # fmt: skip
            ego_fut_trajs=t(step_offsets(r.ego_fut_traj, r.ego_fut_mask)),
            ego_fut_masks=t(r.ego_fut_mask),
        )


def _stack_frames(frames: list[FrameArrays]) -> CameraFrame:
    return CameraFrame(
        images=torch.stack([f.images for f in frames]),
        lidar2img=torch.stack([f.lidar2img for f in frames]),
        can_bus=torch.stack([f.can_bus for f in frames]),
    )


def collate(samples: list[Sample]) -> Batch:
    """Stack the fixed-shape fields; keep the per-sample ones (boxes, map elements) as lists."""
    depth = {len(s.history) for s in samples}
    if len(depth) != 1:
        raise DataError(f"samples of one batch must have equally long history queues, got {sorted(depth)}")
    inputs = VADInputs(
        frame=_stack_frames([s.frame for s in samples]),
        history=[_stack_frames([s.history[k] for s in samples]) for k in range(depth.pop())],
        scene_tokens=[s.scene_token for s in samples],
        command=torch.tensor([s.command for s in samples], dtype=torch.long),
    )
    commands = torch.tensor([s.command for s in samples], dtype=torch.long)
    targets = VADTargets(
        boxes=[s.boxes for s in samples],
        labels=[s.labels for s in samples],
        agent_fut_trajs=[s.agent_fut_trajs for s in samples],
        agent_fut_masks=[s.agent_fut_masks for s in samples],
        map=[s.map for s in samples],
        ego_fut_trajs=torch.stack([s.ego_fut_trajs for s in samples]),
        ego_fut_masks=torch.stack([s.ego_fut_masks for s in samples]),
        ego_fut_cmd=torch.nn.functional.one_hot(commands, 3).float(),
    )
    return Batch(inputs=inputs, targets=targets, sample_tokens=[s.sample_token for s in samples])
