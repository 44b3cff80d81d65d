"""The BEV queries' learned positional encoding (mmdet's `LearnedPositionalEncoding`): one learned vector
per column and one per row, concatenated (column first) into each cell's encoding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from netroller.models.vad.config import VADConfig


class LearnedPositionalEncoding(nn.Module):
    """`num_feats` learned features per column (`col_embed`) and per row (`row_embed`); the encoding of
    cell (row i, column j) is `[col_embed[j], row_embed[i]]`, 2 * num_feats wide."""

    def __init__(self, num_feats: int, row_num_embed: int, col_num_embed: int):
        super().__init__()
        self.num_feats = num_feats
        self.row_embed = nn.Embedding(row_num_embed, num_feats)
        self.col_embed = nn.Embedding(col_num_embed, num_feats)

    def forward(self, mask: Tensor) -> Tensor:  # mask [B, H, W] (only its shape and device are read)
        """[B, 2 * num_feats, H, W]: the same encoding for every sample."""
        bs, h, w = mask.shape[0], mask.shape[-2], mask.shape[-1]
        x_embed = self.col_embed(torch.arange(w, device=mask.device))  # [W, F]
        y_embed = self.row_embed(torch.arange(h, device=mask.device))  # [H, F]
        pos = torch.cat([x_embed.unsqueeze(0).expand(h, w, -1), y_embed.unsqueeze(1).expand(h, w, -1)], -1)
        return pos.permute(2, 0, 1).unsqueeze(0).repeat(bs, 1, 1, 1)  # [H, W, 2F] -> [B, 2F, H, W]


def build_positional_encoding(cfg: VADConfig) -> LearnedPositionalEncoding:
    """VAD's: embed_dims / 2 features per row (bev_h rows) and per column (bev_w columns)."""
    return LearnedPositionalEncoding(cfg.embed_dims // 2, cfg.bev_h, cfg.bev_w)
