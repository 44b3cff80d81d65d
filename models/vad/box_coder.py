"""Box and point coding between metres in the lidar frame and what VAD's heads regress.

Boxes are regressed as 10 numbers (VAD's NMS-free coder): the centre normalized to [0, 1] over the
perception range, log sizes, sin/cos of yaw, and the velocity. Map points are normalized to [0, 1] in x, y.
Normalized targets keep every term of the L1 losses on a comparable scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

BOX_CODE_SIZE = 10


def _lo_span(pc_range, dims: int, device, dtype) -> tuple[Tensor, Tensor]:
    lo = torch.tensor(pc_range[:dims], device=device, dtype=dtype)
    hi = torch.tensor(pc_range[3 : 3 + dims], device=device, dtype=dtype)
    return lo, hi - lo


def encode_boxes(boxes: Tensor, pc_range) -> Tensor:
    """[..., 9] (x, y, z, w, l, h, yaw, vx, vy) -> [..., 10] (cx, cy, cz normalized, log w, log l, log h,
    sin, cos, vx, vy)."""
    lo, span = _lo_span(pc_range, 3, boxes.device, boxes.dtype)
    centre = (boxes[..., 0:3] - lo) / span
    size = boxes[..., 3:6].clamp(min=1e-3).log()
    yaw = boxes[..., 6:7]
    return torch.cat([centre, size, yaw.sin(), yaw.cos(), boxes[..., 7:9]], dim=-1)


def decode_boxes(codes: Tensor, pc_range) -> Tensor:
    """Inverse of `encode_boxes`."""
    lo, span = _lo_span(pc_range, 3, codes.device, codes.dtype)
    centre = codes[..., 0:3] * span + lo
    size = codes[..., 3:6].exp()
    yaw = torch.atan2(codes[..., 6:7], codes[..., 7:8])
    return torch.cat([centre, size, yaw, codes[..., 8:10]], dim=-1)


def normalize_points(points: Tensor, pc_range) -> Tensor:
    """[..., 2] metres -> [0, 1] over the x, y range."""
    lo, span = _lo_span(pc_range, 2, points.device, points.dtype)
    return (points - lo) / span


def denormalize_points(points: Tensor, pc_range) -> Tensor:
    lo, span = _lo_span(pc_range, 2, points.device, points.dtype)
    return points * span + lo
