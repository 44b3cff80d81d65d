"""VAD's BEV encoder and perception transformer against the official `VADPerceptionTransformer`
(tests/fixtures/vad/README.md says how the fixtures were made), and the BEV rotation against torchvision's
`rotate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from netroller.models.vad.bev_encoder import BEVEncoderConfig, BEVFormerEncoder
from netroller.models.vad.config import debug, vad_base, vad_tiny
from netroller.models.vad.decoders import (
    DecoderConfig,
    DetectionTransformerDecoder,
    MapDetectionTransformerDecoder,
)
from netroller.models.vad.ms_deform_attn import multi_scale_deformable_attn
from netroller.models.vad.perception_transformer import (
    PerceptionTransformer,
    build_perception_transformer,
    ego_shift,
)
from netroller.models.vad.rotate import rotate_bev

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vad"
OUTPUT_NAMES = (
    "bev_embed", "hs", "init_reference", "inter_references", "map_hs", "map_init_reference",
    "map_inter_references",
)  # fmt: skip


@pytest.fixture(scope="module")
def recorded() -> dict:
    return torch.load(FIXTURES / "bev_transformer_tiny.pt")


def _recorded_transformer(recorded: dict) -> PerceptionTransformer:
    c = recorded["config"]
    enc = BEVEncoderConfig(
        num_layers=c["num_layers"], embed_dims=c["embed_dims"], num_heads=c["num_heads"], ffn_dims=c["ffn_dims"],
        dropout=0.1, num_cams=c["num_cams"], num_levels=c["num_levels"], pc_range=tuple(c["pc_range"]),
        pillar_points=c["pillar_points"], sca_points=c["sca_points"], tsa_points=c["tsa_points"],
    )  # fmt: skip
    dec = DecoderConfig(
        num_layers=c["num_layers"], embed_dims=c["embed_dims"], num_heads=c["num_heads"], ffn_dims=c["ffn_dims"],
        dropout=0.1, num_points=c["decoder_points"],
    )  # fmt: skip
    model = PerceptionTransformer(
        BEVFormerEncoder(enc),
        DetectionTransformerDecoder(dec),
        MapDetectionTransformerDecoder(dec),
        c["embed_dims"],
        c["num_cams"],
        rotate_center=tuple(c["rotate_center"]),
    )
    model.load_state_dict({k: v.float() for k, v in recorded["state_dict"].items()}, strict=True)
    return model.eval()


def _branches(state: dict[str, Tensor], out_dims: int, embed_dims: int) -> nn.ModuleList:
    branches = nn.ModuleList([nn.Linear(embed_dims, out_dims)])
    branches.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return branches


def _bev_args(recorded: dict, can_bus: str, with_prev: bool) -> tuple:
    c, x = recorded["config"], recorded["inputs"]
    return (
        [f.float() for f in x["mlvl_feats"]],
        x["bev_queries"].float(),
        c["bev_h"],
        c["bev_w"],
        tuple(c["grid_length"]),
        x["bev_pos"].float(),
        x["lidar2img"],
        tuple(c["img_shape"]),
        x[can_bus],
        x["prev_bev"].float() if with_prev else None,
    )


# Where each recorded output keeps its batch: the fixture is of batch 2, and the official temporal
# self-attention mixes the samples of a batch (it reads value[:B]; ours reads each sample's own rows), so
# only sample 0 is the official computation there.
FORWARD_BATCH_DIMS = (1, 2, 0, 1, 2, 0, 1)


def _assert_close(ours: Tensor, official: Tensor, batch_dim: int = 0) -> None:
    assert ours.shape == official.shape
    ours, official = ours.select(batch_dim, 0), official.select(batch_dim, 0)
    assert (ours - official).abs().max() <= 1e-4 * official.abs().max()


def test_first_frame_bev_equals_the_official(recorded):
    model = _recorded_transformer(recorded)
    with torch.no_grad():
        bev = model.get_bev_features(*_bev_args(recorded, "can_bus_still", with_prev=False))
    _assert_close(bev, recorded["outputs"]["first_frame"])


def test_temporal_bev_with_the_turned_and_shifted_previous_bev_equals_the_official(recorded):
    model = _recorded_transformer(recorded)
    with torch.no_grad():
        bev = model.get_bev_features(*_bev_args(recorded, "can_bus_moving", with_prev=True))
    _assert_close(bev, recorded["outputs"]["temporal"])


def test_forward_with_both_decoders_equals_the_official(recorded):
    model = _recorded_transformer(recorded)
    c, x = recorded["config"], recorded["inputs"]
    feats, queries, bev_h, bev_w, grid, pos, l2i, img_shape, can_bus, prev = _bev_args(
        recorded, "can_bus_moving", with_prev=True
    )
    with torch.no_grad():
        outputs = model(
            feats, queries, x["object_query_embed"].float(), x["map_query_embed"].float(), bev_h, bev_w, grid,
            pos, l2i, img_shape, can_bus,
            _branches(recorded["reg_branches"], 10, c["embed_dims"]),
            _branches(recorded["map_reg_branches"], 2, c["embed_dims"]),
            prev,
        )  # fmt: skip
    assert len(outputs) == len(OUTPUT_NAMES)
    for ours, official, dim in zip(outputs, recorded["outputs"]["forward"], FORWARD_BATCH_DIMS, strict=True):
        _assert_close(ours, official, dim)


def test_each_sample_of_a_batch_gets_the_bev_it_gets_alone(recorded):
    model = _recorded_transformer(recorded)
    feats, queries, bev_h, bev_w, grid, pos, l2i, img_shape, can_bus, prev = _bev_args(
        recorded, "can_bus_moving", with_prev=True
    )
    # One camera rig for both samples: the spatial cross-attention picks its queries from sample 0's view.
    l2i = l2i[:1].expand_as(l2i).contiguous()
    with torch.no_grad():
        both = model.get_bev_features(feats, queries, bev_h, bev_w, grid, pos, l2i, img_shape, can_bus, prev)
        for b in range(2):
            alone = model.get_bev_features(
                [f[b : b + 1] for f in feats], queries, bev_h, bev_w, grid, pos[b : b + 1], l2i[b : b + 1],
                img_shape, can_bus[b : b + 1], prev[b : b + 1],
            )  # fmt: skip
            torch.testing.assert_close(both[b : b + 1], alone, rtol=1e-5, atol=1e-5)


def test_previous_bev_is_not_moved_for_zero_ego_motion():
    model = build_perception_transformer(debug())
    prev = torch.randn(2, 20 * 10, 64)
    can_bus = torch.randn(2, 18, dtype=torch.float64)
    can_bus[:, :3] = 0.0  # no translation since the previous frame
    can_bus[:, -1] = 0.0  # no yaw change (can_bus[:, -2], the absolute yaw, stays nonzero)
    assert torch.equal(model.align_prev_bev(prev, can_bus, 20, 10), prev)
    assert torch.equal(ego_shift(can_bus, (3.0, 3.0), 20, 10), torch.zeros(2, 2, dtype=torch.float64))


def test_ego_shift_turns_the_translation_into_the_current_heading():
    # 2 m along x at heading 90 deg: translation angle 0, BEV angle 90 -> all along BEV x.
    can_bus = torch.zeros(1, 18, dtype=torch.float64)
    can_bus[0, 0] = 2.0
    can_bus[0, -2] = torch.pi / 2
    shift = ego_shift(can_bus, (0.6, 0.3), 100, 100)
    torch.testing.assert_close(shift, torch.tensor([[2.0 / 0.3 / 100, 0.0]], dtype=torch.float64))


def test_rotation_equals_torchvision_on_recorded_cases():
    recorded = torch.load(FIXTURES / "rotate_torchvision.pt")
    for case in recorded["cases"]:
        out = rotate_bev(recorded["img"], case["angle"], case["center"])
        assert torch.equal(out, case["out"]), (case["angle"], case["center"])


def test_rotation_by_90_degrees_about_a_pixel_corner_is_the_hand_computed_permutation():
    # torchvision's definition: output pixel centre p reads input point R(-90 deg) (p - c) + c, y down. With
    # c = (1, 1): output (row r, col c) reads input column 1 - r, row c; everything else falls outside -> 0.
    img = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    expected = torch.zeros(1, 4, 4)
    for r in range(2):
        for c in range(4):
            expected[0, r, c] = img[0, c, 1 - r]
    assert torch.equal(rotate_bev(img, 90.0, (1.0, 1.0)), expected)


def test_rotation_by_zero_is_the_identity_for_any_centre():
    img = torch.randn(2, 3, 7, 5)
    assert torch.equal(rotate_bev(img, 0.0, (100.0, 100.0)), img)


def test_deformable_attention_at_a_pixel_centre_reads_that_pixel():
    value = torch.randn(1, 2 * 3, 1, 4)  # one 2x3 level, one head
    loc = torch.tensor([(2 + 0.5) / 3, (1 + 0.5) / 2]).view(1, 1, 1, 1, 1, 2)  # pixel (row 1, col 2)
    out = multi_scale_deformable_attn(value, [(2, 3)], loc, torch.ones(1, 1, 1, 1, 1))
    torch.testing.assert_close(out[0, 0], value[0, 1 * 3 + 2, 0])


class _Recorder:
    """A NetRoller shift that records what it was given and adds a constant."""

    def __init__(self) -> None:
        self.seen: dict[str, Tensor] = {}

    def query(self, bev_queries: Tensor) -> Tensor:
        self.seen["query"] = bev_queries.clone()
        return bev_queries + 1.0

    def feature(self, bev: Tensor) -> Tensor:
        self.seen["feature"] = bev.clone()
        return bev - 2.0


def test_query_shift_sees_the_queries_with_the_can_bus_signal_and_feature_shift_sees_the_encoder_output():
    cfg = debug()
    model = build_perception_transformer(cfg).eval()
    hw = cfg.bev_h * cfg.bev_w
    feats = [torch.randn(1, 6, cfg.embed_dims, 3, 4)]
    queries, pos = torch.randn(hw, cfg.embed_dims), torch.randn(1, cfg.embed_dims, cfg.bev_h, cfg.bev_w)
    l2i = torch.eye(4).expand(1, 6, 4, 4)
    can_bus = torch.randn(1, 18)
    args = (feats, queries, cfg.bev_h, cfg.bev_w, (3.0, 3.0), pos, l2i, (96, 128), can_bus, None)
    shift = _Recorder()
    with torch.no_grad():
        shifted = model.get_bev_features(*args, shift=shift)
        torch.testing.assert_close(shift.seen["query"], queries[None] + model.can_bus_mlp(can_bus)[:, None])
        encoded = model.encoder(
            shift.seen["query"] + 1.0, *_encoder_inputs(model, feats), cfg.bev_h, cfg.bev_w,
            pos.flatten(2).transpose(1, 2), l2i, (96, 128), ego_shift(can_bus, (3.0, 3.0), cfg.bev_h, cfg.bev_w).float(),
        )  # fmt: skip
    torch.testing.assert_close(shift.seen["feature"], encoded)
    torch.testing.assert_close(shifted, encoded - 2.0)


def _encoder_inputs(model: PerceptionTransformer, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The flattened camera features with their embeddings, [B, N, hw, C], and their shapes."""
    f = feats[0]
    value = (
        f.flatten(3).transpose(2, 3) + model.cams_embeds[None, :, None] + model.level_embeds[None, None, 0:1]
    )
    return value, torch.tensor([list(f.shape[-2:])])


def _official_transformer_shapes(preset: str) -> dict[str, list[int]]:
    path = FIXTURES / f"state_dict_{preset}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not recorded yet")
    prefix = "pts_bbox_head.transformer."
    tensors = json.loads(path.read_text())["tensors"]
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.mark.parametrize(("preset", "recipe"), [("tiny", vad_tiny), ("base", vad_base)])
def test_state_dict_names_and_shapes_equal_the_official(preset, recipe):
    official = _official_transformer_shapes(preset)
    ours = {k: list(v.shape) for k, v in build_perception_transformer(recipe()).state_dict().items()}
    assert list(ours) == list(official)  # same names, same order
    assert ours == official
