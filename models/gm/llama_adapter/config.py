"""The shapes of a LLaMA-Adapter V2 model, read from its files: `params.json` for LLaMA-2, the tensors' shapes
for the CLIP tower and the visual branch (their checkpoints record no config of their own)."""

from __future__ import annotations

from dataclasses import dataclass

from netroller.errors import ModelError

# LLaMA-Adapter V2 builds its visual blocks with 16 heads and no checkpoint records the number.
VISUAL_HEADS = 16
# OpenAI CLIP's ViT towers have one head per 64 channels (clip/model.py: vision_heads = width // 64).
CLIP_HEAD_WIDTH = 64
ROPE_THETA = 10000.0


@dataclass(frozen=True, kw_only=True)
class LlamaParams:
    """LLaMA-2's `params.json` (Meta's format), with the vocabulary size filled in from the tokenizer."""

    dim: int
    """Residual-stream width (4096 for 7B)."""
    n_layers: int
    """Decoder blocks (32 for 7B)."""
    n_heads: int
    """Attention heads; must divide `dim`."""
    vocab_size: int
    """Rows of the token embedding (Meta writes -1 and takes the tokenizer's size)."""
    multiple_of: int = 256
    """The feed-forward width is rounded up to a multiple of this."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"params.json: {name} must be an integer >= 1, got {value!r}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ModelError(
                f"params.json: n_heads={self.n_heads} must divide dim={self.dim} into an even head width"
            )
        if not self.norm_eps > 0:
            raise ModelError(f"params.json: norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """SwiGLU width: 2/3 of 4 * dim, rounded up to `multiple_of` (11008 for 7B)."""
        hidden = int(2 * 4 * self.dim / 3)
        return self.multiple_of * -(-hidden // self.multiple_of)


@dataclass(frozen=True, kw_only=True)
class ClipParams:
    """An OpenAI CLIP ViT vision tower (ViT-L/14: width 1024, 24 layers, patch 14, grid 16, output 768)."""

    width: int
    layers: int
    patch_size: int
    grid: int
    """Patches per side: the tower reads (patch_size * grid)-pixel square images."""
    output_dim: int
    """Width after the final projection (`visual.proj`)."""

    @property
    def heads(self) -> int:
        return max(self.width // CLIP_HEAD_WIDTH, 1)

    @property
    def image_size(self) -> int:
        return self.patch_size * self.grid


@dataclass(frozen=True, kw_only=True)
class VisualParams:
    """LLaMA-Adapter V2's visual branch (CLIP features -> projection -> learned queries through transformer
    blocks -> projection to LLaMA's width) and its adapter queries (the defaults: 768, 8 blocks, 10 x 31)."""

    clip_dim: int
    """Input width of `clip_proj` (CLIP's output width)."""
    embed_dim: int
    """Width of the visual blocks (v_embed_dim)."""
    depth: int
    """Visual blocks (v_depth)."""
    mlp_dim: int
    """Hidden width of each visual block's MLP (embed_dim * v_mlp_ratio)."""
    query_len: int
    """Visual / adapter queries per layer."""
    query_layers: int
    """The top decoder blocks that read adapter queries."""
    num_heads: int = VISUAL_HEADS

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ModelError(
                f"adapter checkpoint: visual width {self.embed_dim} is not divisible by the {self.num_heads} "
                "heads of LLaMA-Adapter V2's visual blocks"
            )
