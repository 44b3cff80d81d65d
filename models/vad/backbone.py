"""Image backbone (a small ResNet with basic blocks) and an FPN-style neck to one level of width C.

Written here rather than taken from torchvision (not a dependency). With the default widths and (2, 2, 2, 2)
blocks it is a ResNet-18 body; the neck merges the last `neck_levels` stages top-down, as FPN does, and
returns the finest merged level.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from netroller.models.vad.config import VADConfig


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """Stride-4 stem, then stages that each halve the resolution (the first keeps it)."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            layers = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class FPNNeck(nn.Module):
    """Lateral 1x1 convs to C, top-down upsample-and-add, one 3x3 output conv on the finest merged level."""

    def __init__(self, in_widths: tuple[int, ...], dims: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(w, dims, 1) for w in in_widths)
        self.out = nn.Conv2d(dims, dims, 3, 1, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
        return self.out(x)


class ImageEncoder(nn.Module):
    """Camera images -> one feature map per camera: [B, 6, 3, H, W] -> [B, 6, C, h, w]."""

    def __init__(self, cfg: VADConfig):
        super().__init__()
        self.levels = cfg.neck_levels
        self.backbone = ResNet(cfg.backbone_widths, cfg.backbone_blocks)
        self.neck = FPNNeck(cfg.backbone_widths[-cfg.neck_levels :], cfg.embed_dims)

    def forward(self, images: Tensor) -> Tensor:
        b, n = images.shape[:2]
        feats = self.backbone(images.flatten(0, 1))  # each [B*6, c_i, h_i, w_i]
        x = self.neck(feats[-self.levels :])  # [B*6, C, h, w]
        return x.unflatten(0, (b, n))
