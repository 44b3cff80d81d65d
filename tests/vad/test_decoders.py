"""VAD's decoders, positional encoding and the perception part of its head against outputs recorded from
the official code (tests/fixtures/vad/decoders_tiny.pt, perception_head_tiny.pt; see the README there),
and the head's perception parameter names against the official checkpoints' inventory."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from netroller.errors import ConfigError
from netroller.models.vad.config import debug, vad_base, vad_tiny
from netroller.models.vad.decoders import (
    CustomMSDeformableAttention,
    CustomTransformerDecoder,
    DecoderConfig,
    DetectionTransformerDecoder,
    MapDetectionTransformerDecoder,
)
from netroller.models.vad.perception_head import PerceptionHead
from netroller.models.vad.positional import LearnedPositionalEncoding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vad"
# The official head's attributes that PerceptionHead owns (the rest are the motion and planning part's).
PERCEPTION_PARTS = {
    "transformer", "cls_branches", "reg_branches", "map_cls_branches", "map_reg_branches", "bev_embedding",
    "query_embedding", "map_instance_embedding", "map_pts_embedding", "positional_encoding", "code_weights",
    "map_code_weights",
}  # fmt: skip
RTOL = 1e-4


def assert_close(ours: torch.Tensor, official: torch.Tensor) -> None:
    assert ours.shape == official.shape
    err = (ours - official).abs().max().item()
    assert err <= RTOL * official.abs().max().item(), f"max abs diff {err}"


@pytest.fixture(scope="module")
def dec_fx() -> dict:
    return torch.load(FIXTURES / "decoders_tiny.pt")


@pytest.fixture(scope="module")
def head_fx() -> dict:
    return torch.load(FIXTURES / "perception_head_tiny.pt")


def _decoder_config(meta: dict, **kw) -> DecoderConfig:
    return DecoderConfig(
        num_layers=kw.pop("num_layers", meta["num_layers"]),
        embed_dims=meta["embed_dims"],
        num_heads=meta["num_heads"],
        ffn_dims=meta["ffn_dims"],
        num_points=meta["num_points"],
        dropout=0.1,
        **kw,
    )


def _reg_branches(embed_dims: int, code_size: int, num_layers: int) -> nn.ModuleList:
    d = embed_dims
    branch = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, code_size))
    return nn.ModuleList(copy.deepcopy(branch) for _ in range(num_layers))


@pytest.mark.parametrize(
    ("key", "decoder_cls", "code_size"),
    [("det", DetectionTransformerDecoder, 10), ("map", MapDetectionTransformerDecoder, 2)],
)
def test_refining_decoder_matches_official(dec_fx, key, decoder_cls, code_size):
    meta, fx = dec_fx["meta"], dec_fx[key]
    decoder = decoder_cls(_decoder_config(meta)).eval()
    decoder.load_state_dict(fx["decoder"], strict=True)
    branches = _reg_branches(meta["embed_dims"], code_size, meta["num_layers"])
    branches.load_state_dict(fx["reg_branches"], strict=True)
    with torch.no_grad():
        hs, refs = decoder(
            query=fx["query"],
            key=None,
            value=dec_fx["value"],
            query_pos=fx["query_pos"],
            reference_points=fx["reference_points"],
            reg_branches=branches,
            spatial_shapes=torch.tensor([[meta["bev_h"], meta["bev_w"]]]),
            level_start_index=torch.tensor([0]),
        )
    assert_close(hs, fx["hs"])
    assert_close(refs, fx["refs"])


def test_interaction_decoder_matches_official(dec_fx):
    meta, fx = dec_fx["meta"], dec_fx["custom"]
    decoder = CustomTransformerDecoder(_decoder_config(meta, num_layers=1, return_intermediate=False)).eval()
    decoder.load_state_dict(fx["decoder"], strict=True)
    with torch.no_grad():
        out = decoder(
            query=fx["query"],
            key=fx["key"],
            value=fx["key"],
            query_pos=fx["query_pos"],
            key_pos=fx["key_pos"],
            key_padding_mask=fx["key_padding_mask"],
        )
    assert_close(out, fx["out"])


def test_positional_encoding_matches_official(dec_fx):
    meta, fx = dec_fx["meta"], dec_fx["positional"]
    pe = LearnedPositionalEncoding(meta["embed_dims"] // 2, meta["bev_h"], meta["bev_w"])
    pe.load_state_dict(fx["weights"], strict=True)
    assert_close(pe(torch.zeros(fx["pos"].shape[0], meta["bev_h"], meta["bev_w"])), fx["pos"])


def test_refinement_detaches_references_and_keeps_query_gradient(dec_fx):
    meta, fx = dec_fx["meta"], dec_fx["det"]
    decoder = DetectionTransformerDecoder(_decoder_config(meta))
    branches = _reg_branches(meta["embed_dims"], 10, meta["num_layers"])
    query = fx["query"].clone().requires_grad_(True)
    hs, refs = decoder(
        query,
        value=dec_fx["value"],
        query_pos=fx["query_pos"],
        reference_points=fx["reference_points"],
        reg_branches=branches,
        spatial_shapes=torch.tensor([[meta["bev_h"], meta["bev_w"]]]),
        level_start_index=torch.tensor([0]),
    )
    assert not refs.requires_grad
    hs.sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0


def test_detection_decoder_refuses_2d_reference_points(dec_fx):
    meta, fx = dec_fx["meta"], dec_fx["det"]
    decoder = DetectionTransformerDecoder(_decoder_config(meta))
    with pytest.raises(ValueError, match="refines 3-d reference points"):
        decoder(fx["query"], value=dec_fx["value"], reference_points=fx["reference_points"][..., :2])


def test_deformable_attention_refuses_mismatched_spatial_shapes():
    attn = CustomMSDeformableAttention(16, 8, 1, 4, 0.0)
    query, value = torch.randn(3, 1, 16), torch.randn(20, 1, 16)
    with pytest.raises(ValueError, match="do not cover the 20 values"):
        attn(
            query, value=value, reference_points=torch.rand(1, 3, 1, 2), spatial_shapes=torch.tensor([[4, 4]])
        )


def test_decoder_config_names_the_bad_field():
    with pytest.raises(ConfigError, match="DecoderConfig.num_points"):
        DecoderConfig(num_layers=1, embed_dims=16, num_heads=8, ffn_dims=32, dropout=0.0, num_points=0)


def _head_for(meta: dict, state: dict) -> PerceptionHead:
    """A PerceptionHead of the fixture's sizes with the official head's own layers loaded (the fixture's
    transformer was a recording stand-in, so the transformer keeps its random start)."""
    cfg = dataclasses.replace(
        debug(),
        embed_dims=meta["embed_dims"],
        ffn_dims=meta["ffn_dims"],
        num_heads=8,
        det_layers=meta["det_layers"],
        map_layers=meta["map_layers"],
        num_query=meta["num_query"],
        map_num_vec=meta["map_num_vec"],
        map_num_pts=meta["map_num_pts"],
        bev_h=meta["bev_h"],
        bev_w=meta["bev_w"],
    )
    head = PerceptionHead(cfg).eval()
    result = head.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert {k for k in result.missing_keys if not k.startswith("transformer.")} == {
        "code_weights",
        "map_code_weights",
    }
    return head


def test_head_layer_outputs_match_official(head_fx):
    meta = head_fx["meta"]
    head = _head_for(meta, head_fx["state"])
    with torch.no_grad():
        p = head.decode_layers(*head_fx["transformer_outputs"])
    for name, official in head_fx["out"].items():
        # The official head lists every layer's detached copies; the motion part reads the last one.
        assert_close(getattr(p, name), official[-1] if name.endswith("_bev") else official)
    assert not p.outputs_coords_bev.requires_grad and not p.map_outputs_coords_bev.requires_grad


def test_head_queries_and_bev_encoding_match_official(head_fx):
    meta = head_fx["meta"]
    head = _head_for(meta, head_fx["state"])
    seen = head_fx["seen"]
    with torch.no_grad():
        bev_queries, bev_pos = head.bev_inputs([torch.zeros(meta["batch"], 6, meta["embed_dims"], 3, 5)])
        assert_close(bev_queries, seen["bev_queries"])
        assert_close(bev_pos, seen["bev_pos"])
        assert_close(head.query_embedding.weight, seen["object_query_embeds"])
        assert_close(head.map_query_embeds(), seen["map_query_embeds"])
    assert head.grid_length == tuple(seen["grid_length"].tolist())


def test_map_transform_box_gives_min_max_box():
    cfg = dataclasses.replace(debug(), map_num_vec=1, map_num_pts=3)
    with torch.device("meta"):
        head = PerceptionHead(cfg)
    pts = torch.tensor([[[0.2, 0.9], [0.6, 0.1], [0.4, 0.5]]])  # [B=1, V*P=3, 2]
    box, reshaped = head.map_transform_box(pts)
    assert torch.allclose(box, torch.tensor([[[0.4, 0.5, 0.4, 0.8]]]))
    assert reshaped.shape == (1, 1, 3, 2)


def test_perceive_gives_every_layer_in_the_documented_shapes():
    cfg = debug()
    torch.manual_seed(0)
    head = PerceptionHead(cfg).eval()
    b, c = 1, cfg.embed_dims
    feats = [torch.randn(b, cfg.num_cams, c, 4, 6)]
    lidar2img = torch.eye(4).repeat(b, cfg.num_cams, 1, 1)
    with torch.no_grad():
        p = head.perceive(feats, lidar2img, (128, 192), torch.zeros(b, 18), None)
    a, v, n = cfg.num_query, cfg.map_num_vec, cfg.map_num_pts
    assert p.bev_embed.shape == (cfg.bev_h * cfg.bev_w, b, c)
    assert p.outputs_classes.shape == (cfg.det_layers, b, a, cfg.num_classes)
    assert p.outputs_coords.shape == (cfg.det_layers, b, a, 10)
    assert p.agent_feats.shape == (b, a, c) and p.outputs_coords_bev.shape == (b, a, 2)
    assert p.map_feats.shape == (b, v * n, c)
    assert p.map_outputs_classes.shape == (cfg.map_layers, b, v, cfg.map_num_classes)
    assert p.map_outputs_coords.shape == (cfg.map_layers, b, v, 4)
    assert p.map_outputs_pts_coords.shape == (cfg.map_layers, b, v, n, 2)
    assert p.map_outputs_coords_bev.shape == (b, v, n, 2)


@pytest.mark.parametrize(("preset", "recipe"), [("tiny", vad_tiny), ("base", vad_base)])
def test_perception_parameter_names_and_shapes_are_official(preset, recipe):
    path = FIXTURES / f"state_dict_{preset}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not recorded")
    prefix = "pts_bbox_head."
    official = {
        name[len(prefix) :]: shape
        for name, shape in json.loads(path.read_text())["tensors"].items()
        if name.startswith(prefix) and name[len(prefix) :].split(".")[0] in PERCEPTION_PARTS
    }
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        head = PerceptionHead(recipe())
    ours = {name: list(t.shape) for name, t in head.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {n: s for n, s in ours.items() if official[n] != s} == {}


def test_previous_bev_is_taken_in_either_layout():
    cfg = debug()
    torch.manual_seed(0)
    head = PerceptionHead(cfg).eval()
    b = 2
    feats = [torch.randn(b, cfg.num_cams, cfg.embed_dims, 4, 6)]
    lidar2img = torch.eye(4).repeat(b, cfg.num_cams, 1, 1)
    prev = torch.randn(cfg.bev_h * cfg.bev_w, b, cfg.embed_dims)  # the head's own bev_embed layout
    with torch.no_grad():
        seq_first = head.bev_features(feats, lidar2img, (128, 192), torch.zeros(b, 18), prev)
        batch_first = head.bev_features(
            feats, lidar2img, (128, 192), torch.zeros(b, 18), prev.transpose(0, 1)
        )
    assert torch.equal(seq_first, batch_first)
