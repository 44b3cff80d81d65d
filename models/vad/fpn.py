"""VAD's image neck: mmdet 2.14's `FPN` as VAD configures it, in plain torch.

start_level=0, every backbone output used, no norm and no activation in the convs, nearest upsampling to the
finer level's size on the top-down path, and extra levels made by stride-2 3x3 convs on the last output
(add_extra_convs='on_output'). As mmdet computes it, the first extra conv reads that output as it is;
relu_before_extra_convs puts a ReLU only before the second and later extra convs. VAD-Tiny: C5 -> 1 level;
VAD-Base: C3..C5 -> 3 levels + 1 extra, so that ReLU is never reached by the released models.

Names as mmdet's ConvModule: `lateral_convs.i.conv.*`, `fpn_convs.i.conv.*` (the extra levels continue the
`fpn_convs` list).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netroller.errors import ConfigError
from netroller.models.vad.config import VADConfig
from netroller.models.vad.resnet import resnet_config


@dataclass(frozen=True, kw_only=True)
class FPNConfig:
    """The FPN settings VAD's configs use."""

    in_channels: tuple[int, ...]
    """Channels of each backbone output fed in, finest first (VAD-Base: 512, 1024, 2048)."""
    out_channels: int = 256
    """C of every output level (the model's embed_dims)."""
    num_outs: int = 1
    """Output levels: one per input, then extra stride-2 levels on the last output."""
    relu_before_extra_convs: bool = True
    """ReLU before the second and later extra convs (mmdet applies none before the first)."""

    def __post_init__(self) -> None:
        if not self.in_channels or any(c < 1 for c in self.in_channels):
            raise ConfigError(
                f"FPNConfig.in_channels must be positive channel counts, got {self.in_channels!r}"
            )
        if self.out_channels < 1:
            raise ConfigError(f"FPNConfig.out_channels must be positive, got {self.out_channels!r}")
        if self.num_outs < len(self.in_channels):
            raise ConfigError(
                f"FPNConfig.num_outs ({self.num_outs}) must be >= the {len(self.in_channels)} input levels"
            )


class ConvModule(nn.Module):
    """mmcv's ConvModule without norm and activation: a conv (with bias) under the name `conv`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """Backbone maps [B, C_i, h_i, w_i] (finest first) -> `num_outs` maps [B, out_channels, h_l, w_l]."""

    def __init__(self, cfg: FPNConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.out_channels
        self.lateral_convs = nn.ModuleList(ConvModule(c_in, c, 1) for c_in in cfg.in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(c, c, 3) for _ in cfg.in_channels)
        for _ in range(cfg.num_outs - len(cfg.in_channels)):
            self.fpn_convs.append(ConvModule(c, c, 3, stride=2))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """mmdet's FPN initialisation: Xavier-uniform conv weights, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} feature maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        # Top-down: each coarser lateral, upsampled (nearest) to the finer one's size, is added to it.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)]
        for j, conv in enumerate(self.fpn_convs[len(laterals) :]):
            source = outs[-1]
            if j > 0 and self.cfg.relu_before_extra_convs:
                source = F.relu(source)
            outs.append(conv(source))  # [B, C, ceil(h / 2), ceil(w / 2)]
        return outs


def fpn_config(cfg: VADConfig) -> FPNConfig:
    """The neck settings of a VAD config: the backbone's returned stages in, `num_levels` of embed_dims out."""
    return FPNConfig(
        in_channels=resnet_config(cfg).out_channels, out_channels=cfg.embed_dims, num_outs=cfg.num_levels
    )


def build_neck(cfg: VADConfig) -> FPN:
    """The detector's `img_neck` (VAD-Tiny: in [2048], 1 level; VAD-Base: in [512, 1024, 2048], 4 levels)."""
    return FPN(fpn_config(cfg))
