"""VAD's GridMask augmentation of the camera images in training, in numpy and torch.

The official detector builds `GridMask(True, True, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7)`:
with probability `prob`, one grid of strips (period d drawn in [2, H), strips of half the period, along both
axes, with random phases) is drawn on a 1.5x canvas, centre-cropped to H x W and used to keep the image
only on the strips (mode=1), zeroing the rest. One mask per call, shared by every image and channel of the
[B*N, C, H, W] batch. Its rotation angle is `np.random.randint(rotate=1)`, always 0, and PIL's
`rotate(0)` is a plain copy, so no rotation is done here; the draw is still made so that a seeded numpy
stream gives the official's masks, draw for draw.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from netroller.errors import ConfigError


def grid_keep_mask(h: int, w: int, ratio: float, rng: np.random.RandomState) -> np.ndarray:
    """[h, w] float32, 1 on the grid strips (kept), 0 elsewhere; draws d, the two phases and the angle."""
    hh, ww = int(1.5 * h), int(1.5 * w)  # the canvas, larger so that a rotation would not show its corners
    d = rng.randint(2, h)
    strip = min(max(int(d * ratio + 0.5), 1), d - 1)
    start_h = rng.randint(d)
    start_w = rng.randint(d)
    on_row = np.zeros(hh, bool)
    for i in range(hh // d):
        on_row[d * i + start_h : d * i + start_h + strip] = True
    on_col = np.zeros(ww, bool)
    for i in range(ww // d):
        on_col[d * i + start_w : d * i + start_w + strip] = True
    rng.randint(1)  # the official's rotation angle: randint(1) == 0, the identity
    top, left = (hh - h) // 2, (ww - w) // 2
    # mode=1 inverts the official's mask (1 off the strips), so the strips are what stays.
    keep = on_row[top : top + h, None] | on_col[None, left : left + w]
    return keep.astype(np.float32)


class GridMask(nn.Module):
    """[B*N, C, H, W] -> the same, masked with probability `prob` while the module is training."""

    def __init__(self, prob: float = 0.7, ratio: float = 0.5):
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"GridMask prob must be in [0, 1], got {prob!r}")
        if not 0.0 < ratio < 1.0:
            raise ConfigError(f"GridMask ratio must be in (0, 1), got {ratio!r}")
        self.prob = prob
        self.ratio = ratio

    def forward(self, x: Tensor, rng: np.random.RandomState | None = None) -> Tensor:
        """`rng`: a numpy RandomState to draw from; None uses numpy's global state, as the official does
        (so `np.random.seed(s)` and `RandomState(s)` give the same masks). Nothing is drawn in eval mode."""
        if not self.training:
            return x
        draw = np.random if rng is None else rng
        if draw.rand() > self.prob:
            return x
        h, w = x.shape[-2:]
        mask = torch.from_numpy(grid_keep_mask(h, w, self.ratio, draw)).to(device=x.device, dtype=x.dtype)
        return x * mask  # [H, W] broadcast over [B*N, C]
