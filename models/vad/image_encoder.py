"""The official `extract_img_feat`: multi-camera images through GridMask, the ResNet and the FPN.

A function over the detector's own modules rather than a module of its own, so that the detector's
state_dict keeps the official top-level names `img_backbone.*` and `img_neck.*` (GridMask has no state).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from netroller.models.vad.fpn import FPN
from netroller.models.vad.grid_mask import GridMask
from netroller.models.vad.resnet import ResNet


def extract_img_feat(
    backbone: ResNet,
    neck: FPN,
    grid_mask: GridMask | None,
    images: Tensor,  # [B, N, 3, H, W]
    training: bool,
    rng: np.random.RandomState | None = None,
) -> list[Tensor]:
    """FPN levels, each [B, N, C, h, w]. GridMask (None = disabled, as use_grid_mask=False) acts only when
    `training` and itself in training mode (as it is whenever the detector holding it is); `rng` goes to it
    (None = numpy's global state, as the official)."""
    b, n, c, h, w = images.shape
    x = images.reshape(b * n, c, h, w)  # every camera of every sample is one image to the backbone
    if grid_mask is not None and training:
        x = grid_mask(x, rng)
    feats = neck(backbone(x))
    return [f.view(b, n, *f.shape[1:]) for f in feats]  # [B*N, C, h, w] -> [B, N, C, h, w]
