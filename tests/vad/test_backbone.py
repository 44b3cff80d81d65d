"""VAD's image backbone and neck (mmdet's ResNet + FPN), GridMask and `extract_img_feat`, against a fixture
recorded from mmdet 2.14 and VAD's GridMask (tests/fixtures/vad/README.md says how it was made)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netroller.errors import ConfigError
from netroller.models.vad.config import debug, vad_base, vad_tiny
from netroller.models.vad.fpn import FPN, FPNConfig, build_neck
from netroller.models.vad.grid_mask import GridMask
from netroller.models.vad.image_encoder import extract_img_feat
from netroller.models.vad.resnet import ResNet, ResNetConfig, build_backbone

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vad"


@pytest.fixture(scope="module")
def recorded() -> dict:
    return torch.load(FIXTURES / "backbone_r18_w4.pt")


def _full(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """The fixture's fp16 weights as fp32, plus the BN counters it leaves out."""
    out = {k: v.float() for k, v in state.items()}
    for k, v in module.state_dict().items():
        out.setdefault(k, torch.zeros_like(v))
    return out


def _recorded_modules(recorded: dict) -> tuple[ResNet, FPN]:
    backbone = ResNet(ResNetConfig(**recorded["resnet"]))
    neck = FPN(FPNConfig(**recorded["fpn"]))
    backbone.load_state_dict(_full(recorded["backbone_state_dict"], backbone), strict=True)
    neck.load_state_dict(_full(recorded["neck_state_dict"], neck), strict=True)
    return backbone, neck


def _assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    for o, t in zip(ours, theirs, strict=True):
        assert (o - t).abs().max() <= 1e-4 * t.abs().max()


def test_resnet_and_fpn_equal_mmdet_outputs(recorded):
    backbone, neck = _recorded_modules(recorded)
    backbone.eval()
    neck.eval()
    with torch.no_grad():
        feats = backbone(recorded["input"].float())
        outs = neck(feats)
    _assert_close(feats, recorded["backbone_outputs"])
    # 3 backbone levels + 2 extra levels: covers nearest upsampling to odd sizes and the ReLU before the
    # second extra conv.
    _assert_close(outs, recorded["neck_outputs"])


def test_train_mode_freezes_stem_stage1_and_batchnorm_as_mmdet(recorded):
    backbone, _ = _recorded_modules(recorded)
    backbone.train()
    frozen = sorted(k for k, p in backbone.named_parameters() if not p.requires_grad)
    in_eval = sorted(k for k, m in backbone.named_modules() if not m.training)
    assert frozen == recorded["frozen_params"]
    assert in_eval == recorded["eval_modules_in_train"]


def test_train_mode_forward_leaves_batchnorm_statistics_alone():
    backbone = ResNet(ResNetConfig(depth=18, base_channels=4, out_indices=(3,))).train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone(torch.randn(2, 3, 64, 64)).pop().sum().backward()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Stage 2 onwards still learns (its convs), the stem and stage 1 do not.
    assert backbone.layer2[0].conv1.weight.grad is not None
    assert backbone.conv1.weight.grad is None and backbone.layer1[0].conv1.weight.grad is None


def _official_shapes(preset: str) -> dict[str, list[int]]:
    """The `img_backbone.` / `img_neck.` entries (name -> shape) of the official detector's state_dict."""
    path = FIXTURES / f"state_dict_{preset}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not recorded yet")
    tensors = json.loads(path.read_text())["tensors"]
    return {k: v for k, v in tensors.items() if k.startswith(("img_backbone.", "img_neck."))}


@pytest.mark.parametrize(("preset", "recipe"), [("tiny", vad_tiny), ("base", vad_base)])
def test_state_dict_names_and_shapes_equal_the_official(preset, recipe):
    official = _official_shapes(preset)
    cfg = recipe()
    ours = {f"img_backbone.{k}": list(v.shape) for k, v in build_backbone(cfg).state_dict().items()}
    ours |= {f"img_neck.{k}": list(v.shape) for k, v in build_neck(cfg).state_dict().items()}
    assert list(ours) == list(official)  # same names, same order
    assert ours == official


def test_resnet50_has_torchvision_resnet50s_parameters_without_fc():
    backbone = build_backbone(vad_tiny())
    # torchvision's resnet50: 25,557,032 parameters, of which fc holds 2048 * 1000 + 1000.
    assert sum(p.numel() for p in backbone.parameters()) == 25_557_032 - 2_049_000
    assert backbone.state_dict()["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert backbone.layer2[0].conv2.stride == (2, 2)  # style='pytorch': the 3x3 conv strides


def test_neck_inputs_follow_the_backbone_stages():
    assert build_neck(vad_tiny()).cfg.in_channels == (2048,)
    assert build_neck(vad_base()).cfg.in_channels == (512, 1024, 2048)
    assert build_neck(debug()).cfg.in_channels == (128,)  # ResNet-18 C5 at a quarter of the width
    assert (
        len(build_neck(dataclasses.replace(debug(), resnet_out_indices=(1, 2, 3), num_levels=4)).fpn_convs)
        == 4
    )


def test_bad_settings_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="ResNetConfig.depth"):
        ResNetConfig(depth=42)
    with pytest.raises(ConfigError, match="FPNConfig.num_outs"):
        FPNConfig(in_channels=(8, 16), num_outs=1)


def test_grid_mask_equals_the_official_masks_for_a_seed(recorded):
    grid_mask = GridMask().train()
    for case in recorded["gridmask"]:
        keep = np.unpackbits(case["keep_bits"].numpy())[: case["h"] * case["w"]].reshape(case["h"], case["w"])
        out = grid_mask(torch.ones(2, 3, case["h"], case["w"]), np.random.RandomState(case["seed"]))
        assert torch.equal(out, torch.from_numpy(keep).float().expand_as(out))


def test_grid_mask_is_reproducible_with_a_seeded_generator():
    grid_mask = GridMask(prob=1.0).train()
    x = torch.rand(4, 3, 40, 56)
    first = grid_mask(x, np.random.RandomState(3))
    assert torch.equal(first, grid_mask(x, np.random.RandomState(3)))
    assert not torch.equal(first, x)


def test_grid_mask_acts_only_in_training():
    backbone = ResNet(ResNetConfig(depth=18, base_channels=4, out_indices=(3,)))
    neck = FPN(FPNConfig(in_channels=(32,), out_channels=8))
    grid_mask = GridMask(prob=1.0)
    images = torch.rand(1, 2, 3, 64, 64)  # [B, N, 3, H, W]
    backbone.eval()
    neck.eval()

    def feats(training: bool) -> torch.Tensor:
        grid_mask.train(training)
        return extract_img_feat(backbone, neck, grid_mask, images, training, np.random.RandomState(0))[0]

    plain = extract_img_feat(backbone, neck, None, images, True)[0]
    assert torch.equal(feats(False), plain)
    assert not torch.equal(feats(True), plain)


def test_extract_img_feat_runs_every_camera_and_keeps_b_n():
    backbone = ResNet(ResNetConfig(depth=18, base_channels=4, out_indices=(1, 2, 3))).eval()
    neck = FPN(FPNConfig(in_channels=(8, 16, 32), out_channels=8, num_outs=4)).eval()
    images = torch.rand(2, 3, 3, 64, 96)
    levels = extract_img_feat(backbone, neck, None, images, False)
    assert [tuple(f.shape) for f in levels] == [
        (2, 3, 8, 8, 12),
        (2, 3, 8, 4, 6),
        (2, 3, 8, 2, 3),
        (2, 3, 8, 1, 2),
    ]
    one_camera = neck(backbone(images[1, 2:3]))
    for level, ref in zip(levels, one_camera, strict=True):
        torch.testing.assert_close(level[1, 2], ref[0])
