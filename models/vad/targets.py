"""What VAD's losses compare the outputs with: one batch's ground truth, built from annotations only.

Conventions (those of the official info files and of what the official `loss()` receives):
- Boxes are x, y, z, w, l, h, yaw, vx, vy in the lidar frame, z at the box's gravity centre (the official
  loss takes `gravity_center` of its bottom-centred `LiDARInstance3DBoxes`), w, l, h the devkit's `wlh`, yaw
  as VAD's converter writes it (`-yaw_nuscenes - pi/2`), velocity in m/s in the lidar frame.
- Agent futures are per-step offsets (x, y) of the box centre over the next `fut_ts` steps, with a 0/1 mask
  per step (the first 3 * fut_ts columns of the official `gt_attr_labels`: fut_ts * 2 offsets, x and y
  interleaved, then fut_ts mask values; see `agent_futures_from_attr_labels`).
- Ego futures are per-step offsets in metres, with a 0/1 mask per step and the one-hot driving command
  (right, left, straight: the order of VAD's converter and of the planning modes).
- Map ground truth comes from each element's polyline through `map_targets.prepare_map_gt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from netroller.errors import DataError
from netroller.models.vad.map_targets import MapGT


def vad_yaw(yaw: np.ndarray) -> np.ndarray:
    """The index's yaw (counter-clockwise from +x, lidar frame) as VAD's converter writes it,
    `-yaw - pi/2`; the map is its own inverse, so it also turns VAD's yaw back into the index's."""
    return -np.asarray(yaw) - math.pi / 2


@dataclass
class VADTargets:
    """One batch's ground truth; lists hold one entry per sample (N boxes, M map elements each)."""

    boxes: list[Tensor]  # [N, 9] float, see the module docstring
    labels: list[Tensor]  # [N] long detection class
    agent_fut_trajs: list[Tensor]  # [N, fut_ts, 2] per-step offsets in metres
    agent_fut_masks: list[Tensor]  # [N, fut_ts] 1 where the step exists
    map: list[MapGT]  # map elements, their classes and every equivalent point order
    ego_fut_trajs: Tensor  # [B, fut_ts, 2] per-step offsets in metres
    ego_fut_masks: Tensor  # [B, fut_ts] 1 where the step exists
    ego_fut_cmd: Tensor  # [B, ego_fut_mode] one-hot command: right, left, straight

    def __post_init__(self) -> None:
        b = self.ego_fut_trajs.shape[0]
        for name in ("boxes", "labels", "agent_fut_trajs", "agent_fut_masks", "map"):
            if len(getattr(self, name)) != b:
                raise DataError(f"VADTargets.{name} has {len(getattr(self, name))} samples, expected {b}")
        for i, (box, lab, fut, mask) in enumerate(
            zip(self.boxes, self.labels, self.agent_fut_trajs, self.agent_fut_masks, strict=True)
        ):
            n = box.shape[0]
            if box.shape != (n, 9) or lab.shape != (n,) or fut.shape[0] != n or mask.shape != fut.shape[:2]:
                raise DataError(
                    f"VADTargets sample {i}: boxes {tuple(box.shape)}, labels {tuple(lab.shape)}, futures "
                    f"{tuple(fut.shape)}, masks {tuple(mask.shape)} do not describe the same N boxes"
                )
        if not bool(((self.ego_fut_cmd == 0) | (self.ego_fut_cmd == 1)).all()) or not bool(
            (self.ego_fut_cmd.sum(-1) == 1).all()
        ):
            raise DataError("VADTargets.ego_fut_cmd must be one-hot per sample")

    @property
    def batch_size(self) -> int:
        return self.ego_fut_trajs.shape[0]

    def to(self, device: torch.device | str) -> VADTargets:
        return VADTargets(
            boxes=[t.to(device) for t in self.boxes],
            labels=[t.to(device) for t in self.labels],
            agent_fut_trajs=[t.to(device) for t in self.agent_fut_trajs],
            agent_fut_masks=[t.to(device) for t in self.agent_fut_masks],
            map=[m.to(device) for m in self.map],
            ego_fut_trajs=self.ego_fut_trajs.to(device),
            ego_fut_masks=self.ego_fut_masks.to(device),
            ego_fut_cmd=self.ego_fut_cmd.to(device),
        )


def agent_futures_from_attr_labels(attr_labels: Tensor, fut_ts: int) -> tuple[Tensor, Tensor]:
    """The official `gt_attr_labels` [N, >= 3 * fut_ts] -> per-step offsets [N, fut_ts, 2] and masks
    [N, fut_ts] (the rest of the packing, goal, lcf features and yaw, the losses do not read)."""
    if attr_labels.ndim != 2 or attr_labels.shape[1] < 3 * fut_ts:
        raise DataError(f"gt_attr_labels must be [N, >= {3 * fut_ts}], got {tuple(attr_labels.shape)}")
    trajs = attr_labels[:, : 2 * fut_ts].reshape(-1, fut_ts, 2)
    return trajs, attr_labels[:, 2 * fut_ts : 3 * fut_ts]
