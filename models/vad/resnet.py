"""VAD's image backbone: mmdet 2.14's `ResNet` as VAD configures it, in plain torch.

style='pytorch' (a Bottleneck strides in its 3x3 conv), the 7x7 stem without deep stem, downsample shortcuts
as a 1x1 conv + BN (`downsample.0`, `downsample.1`). BatchNorm is never trained (the config's
`norm_cfg=dict(type='BN', requires_grad=False)`) and stays in eval mode when the model trains
(`norm_eval=True`); the stem and the first `frozen_stages` stages are frozen. Parameter names are mmdet's
(`conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, ...), which are also
torchvision's, so the ImageNet weights the official training starts from (`torchvision://resnet50`) load
into it with only torchvision's `fc.*` left over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netroller.errors import ConfigError
from netroller.models.vad.config import VADConfig


@dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    """The mmdet ResNet settings VAD's configs use; the rest of mmdet's options keep their defaults."""

    depth: int = 50
    """18 or 34 (BasicBlock), 50 or 101 (Bottleneck)."""
    out_indices: tuple[int, ...] = (3,)
    """Stages whose outputs are returned, in stage order (0 = C2, stride 4 ... 3 = C5, stride 32)."""
    base_channels: int = 64
    """Width of the stem and of stage 0's blocks; each later stage doubles it. 64 for the real nets."""
    frozen_stages: int = 1
    """Stem and stages 1..frozen_stages get no gradient and stay in eval mode; -1 freezes nothing."""
    norm_eval: bool = True
    """Keep every BatchNorm in eval mode (running statistics, not batch ones) even in training."""
    zero_init_residual: bool = True
    """`init_weights` zeroes each block's last BN (mmdet's default). With BN weights never trained this
    silences the residual branches for good, so only a from-scratch run would want it False; the official
    training loads ImageNet weights over it."""

    def __post_init__(self) -> None:
        if self.depth not in _ARCH:
            raise ConfigError(f"ResNetConfig.depth must be one of {sorted(_ARCH)}, got {self.depth!r}")
        if not self.out_indices or any(not 0 <= i <= 3 for i in self.out_indices):
            raise ConfigError(
                f"ResNetConfig.out_indices must be stage numbers in 0..3, got {self.out_indices!r}"
            )
        if self.base_channels < 1:
            raise ConfigError(f"ResNetConfig.base_channels must be positive, got {self.base_channels!r}")
        if not -1 <= self.frozen_stages <= 4:
            raise ConfigError(f"ResNetConfig.frozen_stages must be in -1..4, got {self.frozen_stages!r}")

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each returned stage (ResNet-50 C3..C5: 512, 1024, 2048)."""
        block, _ = _ARCH[self.depth]
        return tuple(self.base_channels * 2**i * block.expansion for i in sorted(set(self.out_indices)))


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.requires_grad_(False)  # norm_cfg requires_grad=False: BN weight and bias are never trained
    return bn


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); the first one strides."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided: style='pytorch'), 1x1 expand by 4 (ResNet-50/101)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


_ARCH: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def _stage(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    """One stage (mmdet's ResLayer): the first block strides and gets the projection shortcut."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            _bn(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """[B, 3, H, W] images -> the `out_indices` stages' feature maps, each [B, C_i, H / 2^(i+2), W / 2^(i+2)]."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        block, stage_blocks = _ARCH[cfg.depth]
        width = cfg.base_channels
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, blocks in enumerate(stage_blocks):
            planes = width * 2**i
            self.add_module(
                f"layer{i + 1}", _stage(block, inplanes, planes, blocks, stride=1 if i == 0 else 2)
            )
            inplanes = planes * block.expansion
        self.init_weights()
        self._freeze_stages()

    def _stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _freeze_stages(self) -> None:
        # As mmdet: the stem's BN and the frozen stages go to eval mode and lose their gradients. The stem's
        # conv, ReLU and max-pool keep the parent's mode (it changes nothing for them), as in mmdet.
        if self.cfg.frozen_stages >= 0:
            self.bn1.eval()
            for module in (self.conv1, self.bn1):
                module.requires_grad_(False)
        for stage in self._stages()[: self.cfg.frozen_stages]:
            stage.eval()
            stage.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        """Set the mode, then put the frozen parts (and with norm_eval every BatchNorm) back in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.cfg.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):  # a converted SyncBatchNorm too
                    module.eval()
        return self

    @torch.no_grad()
    def init_weights(self) -> None:
        """mmdet's from-scratch initialisation: Kaiming-normal convs (fan_out, relu), BN weight 1 and bias 0,
        and with zero_init_residual each block's last BN zeroed."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.cfg.zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    last_bn = module.bn3 if isinstance(module, Bottleneck) else module.bn2
                    nn.init.zeros_(last_bn.weight)
                    nn.init.zeros_(last_bn.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, base, H/4, W/4]
        outs = []
        for i, stage in enumerate(self._stages()):
            x = stage(x)
            if i in self.cfg.out_indices:
                outs.append(x)
        return outs


def resnet_config(cfg: VADConfig) -> ResNetConfig:
    """The backbone settings of a VAD config (frozen stem + stage 1, frozen eval-mode BN, as the official)."""
    return ResNetConfig(
        depth=cfg.resnet_depth,
        out_indices=tuple(cfg.resnet_out_indices),
        base_channels=cfg.resnet_base_channels,
    )


def build_backbone(cfg: VADConfig) -> ResNet:
    """The detector's `img_backbone`."""
    return ResNet(resnet_config(cfg))
