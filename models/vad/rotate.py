"""Rotation of a BEV feature map about a pixel, with the semantics of torchvision's tensor `rotate`
(`torchvision.transforms.functional.rotate(img, angle, center=center)`, defaults otherwise), which VAD uses to
turn the previous frame's BEV into the current ego heading. torchvision does not import beside the CPU torch
here, so this reproduces its affine-grid sampling in plain torch.

torchvision's definition: `angle` in degrees, counter-clockwise as the image is displayed (rows down);
`center` (x, y) in pixel coordinates with the origin at the top-left corner of the top-left pixel; NEAREST
sampling at the output pixel centres; points that fall outside the input read 0; output size = input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _inverse_rotation(angle_deg: float, center_xy: Sequence[float]) -> list[float]:
    """The 2x3 matrix taking an output pixel centre to the input point it reads, both in coordinates
    relative to the image centre (torchvision's `_get_inverse_affine_matrix` for a pure rotation)."""
    # torchvision's affine and rotate disagree on the sign of the angle; rotate passes -angle to the
    # affine inverse, which makes it counter-clockwise on screen.
    rot = math.radians(-angle_deg)
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    cx, cy = center_xy
    # Inverse of [[a, b], [c, d]] (determinant 1) about the centre: x_in = M (x_out - ctr) + ctr.
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * -cx + m[1] * -cy + cx
    m[5] += m[3] * -cx + m[4] * -cy + cy
    return m


def _sampling_grid(theta: Tensor, h: int, w: int) -> Tensor:  # -> [1, H, W, 2]
    """Normalised grid_sample coordinates of every output pixel centre mapped through `theta` [1, 2, 3]
    (torchvision's `_gen_affine_grid`: it normalises after applying theta, by the input's half size)."""
    base = torch.empty(1, h, w, 3, dtype=theta.dtype, device=theta.device)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, device=theta.device))
    base[..., 1].copy_(
        torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, device=theta.device).unsqueeze(-1)
    )
    base[..., 2].fill_(1)
    half = torch.tensor([0.5 * w, 0.5 * h], dtype=theta.dtype, device=theta.device)
    return base.view(1, h * w, 3).bmm(theta.transpose(1, 2) / half).view(1, h, w, 2)


def rotate_bev(img: Tensor, angle_deg: float, center: Sequence[float]) -> Tensor:
    """`img` [C, H, W] or [B, C, H, W] (floating point) turned by `angle_deg` degrees counter-clockwise about
    `center` = (x, y) pixels, NEAREST, zeros outside; the same shape back. One angle for the whole batch."""
    if img.ndim not in (3, 4) or not img.is_floating_point():
        raise ValueError(f"rotate_bev wants a float [C, H, W] or [B, C, H, W] tensor, got {tuple(img.shape)}")
    h, w = img.shape[-2:]
    # torchvision moves the centre to coordinates relative to the image centre before building the matrix.
    center_f = [float(center[0]) - w * 0.5, float(center[1]) - h * 0.5]
    theta = torch.tensor(_inverse_rotation(float(angle_deg), center_f), dtype=img.dtype, device=img.device)
    grid = _sampling_grid(theta.reshape(1, 2, 3), h, w)
    batch = img if img.ndim == 4 else img.unsqueeze(0)  # [B, C, H, W]
    out = F.grid_sample(
        batch, grid.expand(batch.shape[0], h, w, 2), mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out if img.ndim == 4 else out.squeeze(0)
