"""The NetRoller adapter: shapes, masking, the layer embedding, shift placement, gradients."""

from __future__ import annotations

import pytest
import torch

from netroller.errors import ConfigError
from netroller.models.adapter import AdapterConfig, NetRoller, NetRollerAdapter, valid_mask

B, L, T, H = 2, 3, 4, 32


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, L, T, H, generator=torch.Generator().manual_seed(seed))


def _cfg(**kw) -> AdapterConfig:
    # The output projection drawn, not zero: these tests look at what the adapter computes.
    base = dict(gm_hidden=H, gm_layers=L, out_dim=16, fuse_heads=4, dropout=0.0, zero_init=False)
    base.update(kw)
    return AdapterConfig(**base)


@pytest.mark.parametrize(("mode", "queries"), [("bias", 1), ("tf", 8)])
def test_adapter_output_shape_per_mode(mode, queries):
    adapter = NetRollerAdapter(_cfg(mode=mode))
    valid = torch.ones(B, L * T, dtype=torch.bool)
    assert adapter(_latents(), valid).shape == (B, queries, 16)


@pytest.mark.parametrize("mode", ["bias", "tf"])
def test_all_masked_equals_nonsensical_only_path(mode):
    torch.manual_seed(0)
    adapter = NetRollerAdapter(_cfg(mode=mode)).eval()
    masked = adapter(_latents(), torch.zeros(B, L * T, dtype=torch.bool))
    # The same computation with a memory holding only the nonsensical token.
    q = adapter.queries.expand(B, -1, -1)
    mem = adapter.nonsense.expand(B, 1, H)
    o, _ = adapter.attn(q, mem, mem, need_weights=False)
    y = o + adapter.mlp(adapter.norm(o + q)) if mode == "bias" else o + adapter.mlp(adapter.norm(o)) + q
    assert torch.isfinite(masked).all()
    torch.testing.assert_close(masked, adapter.proj(y))


@pytest.mark.parametrize("mode", ["bias", "tf"])
def test_zero_init_starts_at_the_baseline_and_learns(mode):
    """With `zero_init` the rollers start at zero (Bias: the shift adds nothing; TF: the fusion attends to zero
    rollers), and the output projection gets a gradient, so the first step moves it."""
    torch.manual_seed(0)
    roller = NetRoller(_cfg(mode=mode, zero_init=True))
    shift = roller.shift(_latents(), torch.full((B,), T), torch.ones(B, dtype=torch.bool))
    assert torch.count_nonzero(shift.rollers) == 0
    bev = torch.randn(B, 6, 16)
    if mode == "bias":
        torch.testing.assert_close(shift.query(bev), bev)
    shift.query(bev).square().sum().backward() if mode == "tf" else (
        shift.rollers * bev[:, :1]
    ).sum().backward()
    assert roller.adapter.proj.weight.grad.abs().sum() > 0
    drawn = NetRoller(_cfg(mode=mode, zero_init=False))
    assert torch.count_nonzero(drawn.adapter.proj.weight) > 0


def test_masked_latents_do_not_change_the_output():
    adapter = NetRollerAdapter(_cfg()).eval()
    valid = torch.zeros(B, L * T, dtype=torch.bool)
    torch.testing.assert_close(adapter(_latents(0), valid), adapter(_latents(1), valid))


def test_layer_embedding_is_added_per_layer():
    adapter = NetRollerAdapter(_cfg())
    hidden = torch.zeros(1, L, T, H)
    mem, pad = adapter.memory(hidden, torch.ones(1, L * T, dtype=torch.bool))
    tokens = mem[0, :-1].reshape(L, T, H)
    for layer in range(L):
        torch.testing.assert_close(tokens[layer], adapter.layer_embed[layer].expand(T, H))
    assert not pad.any()


def test_no_layer_embedding_leaves_tokens_unchanged():
    adapter = NetRollerAdapter(_cfg(layer_embedding=False))
    hidden = _latents()
    mem, _ = adapter.memory(hidden, torch.ones(B, L * T, dtype=torch.bool))
    torch.testing.assert_close(mem[:, :-1], hidden.reshape(B, L * T, H))
    assert adapter.layer_embed is None


def test_valid_mask_follows_length_and_presence():
    mask = valid_mask(torch.tensor([2, 4]), torch.tensor([True, False]), num_layers=2, tokens=4)
    assert mask.tolist() == [[True, True, False, False] * 2, [False] * 8]


@pytest.mark.parametrize("place", ["query", "feature"])
def test_shift_changes_only_the_named_place(place):
    roller = NetRoller(_cfg(shift=place))
    shift = roller.shift(_latents(), torch.full((B,), T), torch.ones(B, dtype=torch.bool))
    bev = torch.randn(B, 10, 16)
    shifted_q, shifted_f = shift.query(bev), shift.feature(bev)
    changed, unchanged = (shifted_q, shifted_f) if place == "query" else (shifted_f, shifted_q)
    assert not torch.allclose(changed, bev)
    assert unchanged is bev


def test_bias_mode_adds_one_vector_to_every_cell():
    roller = NetRoller(_cfg(mode="bias"))
    shift = roller.shift(_latents(), torch.full((B,), T), torch.ones(B, dtype=torch.bool))
    bev = torch.randn(B, 10, 16)
    delta = shift.query(bev) - bev
    torch.testing.assert_close(delta, delta[:, :1].expand_as(delta))


def test_tf_mode_fuses_through_cross_attention():
    roller = NetRoller(_cfg(mode="tf"))
    assert roller.fusion is not None
    shift = roller.shift(_latents(), torch.full((B,), T), torch.ones(B, dtype=torch.bool))
    assert shift.rollers.shape == (B, 8, 16)
    bev = torch.randn(B, 10, 16)
    delta = shift.query(bev) - bev
    assert not torch.allclose(delta, delta[:, :1].expand_as(delta))  # not a broadcast bias


def test_gradients_reach_the_adapter_not_the_latents():
    roller = NetRoller(_cfg(mode="tf"))
    hidden = _latents()  # cached latents: plain tensors, no grad (the GM is frozen)
    shift = roller.shift(hidden, torch.full((B,), T), torch.ones(B, dtype=torch.bool))
    shift.query(torch.randn(B, 10, 16)).sum().backward()
    assert hidden.grad is None
    for name, p in roller.named_parameters():
        assert p.grad is not None, name


def test_mismatched_latent_width_is_refused():
    adapter = NetRollerAdapter(_cfg())
    with pytest.raises(ConfigError, match="expects latents with 3 layers x hidden 32"):
        adapter(torch.zeros(1, L, T, H + 1), torch.ones(1, L * T, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"heads": 5}, "heads=5 must divide"),
        ({"gm_layers": 0}, "gm_layers must be >= 1"),
        ({"mode": "big"}, "big"),
    ],
)
def test_bad_adapter_config_is_refused(kw, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        _cfg(**kw)


def test_default_heads_match_the_paper_at_4096():
    assert AdapterConfig(gm_hidden=4096, gm_layers=32).attn_heads == 32
