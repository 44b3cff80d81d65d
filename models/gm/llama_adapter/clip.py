"""OpenAI CLIP's ViT vision tower as LLaMA-Adapter V2 reads it: every token kept (the class token and all
patches), each through `ln_post` and the projection, not only the class token as CLIP's own `encode_image`.

Parameter names follow the `visual.*` part of OpenAI's state dict (`conv1.weight`, `transformer.resblocks.0
.attn.in_proj_weight`, ...), so a CLIP file's tensors load by name; the shapes decide the size (`ClipParams`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netroller.models.gm.llama_adapter.config import ClipParams


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (CLIP's own, for half-precision towers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _SelfAttention(nn.Module):
    """`nn.MultiheadAttention`'s parameters (one packed in-projection), batch first."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seq, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(bsz, seq, 3, self.heads, width // self.heads).permute(
            2, 0, 3, 1, 4
        )  # (3, B, h, N, hd)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.out_proj(out.transpose(1, 2).reshape(bsz, seq, width))


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = _SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Blocks(nn.Module):
    def __init__(self, params: ClipParams) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            _ResidualBlock(params.width, params.heads) for _ in range(params.layers)
        )


class ClipVision(nn.Module):
    """images [B, 3, S, S] (CLIP-normalised) -> [B, grid^2 + 1, output_dim]."""

    def __init__(self, params: ClipParams) -> None:
        super().__init__()
        self.params = params
        w = params.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=params.patch_size, stride=params.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(params.grid**2 + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = _Blocks(params)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, params.output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images.to(self.conv1.weight.dtype))  # (B, w, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid^2, w)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x) @ self.proj
