"""LLaMA-Adapter V2 multimodal: CLIP features of every camera -> `clip_proj` -> learned visual queries read
them through transformer blocks -> `visual_proj` to LLaMA's width; each of the top `query_layers` decoder
blocks attends (gated) to its own adapter queries plus these visual queries.

Parameter names are the authors' (`clip_proj`, `visual_query`, `visual_blocks.0.attn.qkv`, `adapter_query`,
`llama.layers.31.attention.gate`, ...), so their checkpoint's tensors load by name; CLIP's tower is `clip`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from netroller.models.gm.llama_adapter.clip import ClipVision, LayerNorm
from netroller.models.gm.llama_adapter.config import ClipParams, LlamaParams, VisualParams
from netroller.models.gm.llama_adapter.llama import (
    AttentionKernel,
    DecoderOutput,
    KVCache,
    Llama,
    TokenBatch,
)


class _VisualAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, seq, dim = x.shape
        qkv = self.qkv(x).view(bsz, seq, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, N, hd)
        return self.proj(out.transpose(1, 2).reshape(bsz, seq, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisualBlock(nn.Module):
    """A pre-norm ViT block as the authors build theirs (timm 0.3's `Block`: LayerNorm eps 1e-5, exact GELU)."""

    def __init__(self, params: VisualParams) -> None:
        super().__init__()
        self.norm1 = LayerNorm(params.embed_dim)
        self.attn = _VisualAttention(params.embed_dim, params.num_heads)
        self.norm2 = LayerNorm(params.embed_dim)
        self.mlp = _Mlp(params.embed_dim, params.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LlamaAdapterV2(nn.Module):
    def __init__(
        self,
        llama: LlamaParams,
        clip: ClipParams,
        visual: VisualParams,
        *,
        kernel: AttentionKernel = "sdpa",
    ) -> None:
        super().__init__()
        self.visual_params = visual
        self.clip = ClipVision(clip)
        self.clip_proj = nn.Linear(visual.clip_dim, visual.embed_dim)
        self.clip_proj_norm = LayerNorm(visual.embed_dim)
        self.visual_query = nn.Embedding(visual.query_len, visual.embed_dim)
        self.visual_blocks = nn.ModuleList(VisualBlock(visual) for _ in range(visual.depth))
        self.visual_proj = nn.Linear(visual.embed_dim, llama.dim)
        self.visual_proj_norm = LayerNorm(llama.dim)
        self.adapter_query = nn.Embedding(visual.query_len * visual.query_layers, llama.dim)
        self.llama = Llama(llama, kernel=kernel)

    @property
    def params(self) -> LlamaParams:
        return self.llama.params

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, N, 3, S, S] (N cameras, CLIP-normalised) -> visual queries [B, query_len, dim]."""
        bsz, cams = images.shape[:2]
        feats = self.clip(images.flatten(0, 1))  # (B*N, grid^2 + 1, clip_dim)
        feats = feats.view(bsz, cams * feats.shape[1], -1)  # every camera's tokens, camera after camera
        feats = self.clip_proj_norm(self.clip_proj(feats))
        queries = self.visual_query.weight.expand(bsz, -1, -1)
        x = torch.cat([queries, feats], dim=1)
        for block in self.visual_blocks:
            x = block(x)
        return self.visual_proj_norm(self.visual_proj(x[:, : self.visual_params.query_len]))

    def forward(
        self,
        batch: TokenBatch,
        visual: torch.Tensor,
        *,
        layers: tuple[int, ...],
        cache: KVCache | None = None,
        logits: bool = True,
    ) -> DecoderOutput:
        """One decoder pass reading `visual` [B, query_len, dim] through the adapter queries."""
        v = self.visual_params
        adapter = self.adapter_query.weight.view(v.query_layers, v.query_len, -1)
        adapters = adapter[None] + visual[:, None]  # (B, query_layers, query_len, dim)
        return self.llama(batch, adapters, layers=layers, cache=cache, logits=logits)
