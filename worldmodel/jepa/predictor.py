"""The JEPA predictor: a narrow transformer from context tokens to target tokens."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from worldmodel.jepa.masks import apply_masks
from worldmodel.jepa.vit import sincos_pos_embed


class MaskedPredictor(nn.Module):
    """Predicts tokens at target positions from context tokens.

    The context tokens are projected to the predictor's width and given their
    positions; one mask token per target position, carrying that position, is
    appended; a stack of transformer blocks mixes them and the outputs at the mask
    tokens are projected to ``out_dim``.

    Args:
        in_dim: width of the encoder's tokens.
        out_dim: width of the predicted tokens (the encoder's width, or the pixels per
            patch for the pixel-target ablation).
        grid: the patch grid ``(gh, gw)``.
        width, depth, heads: the predictor's transformer.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], width: int, depth: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"predictor width {width} must be divisible by its heads {heads}")
        self.width = width
        self.embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("pos", sincos_pos_embed(grid, width), persistent=False)
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """``context (B, Nc, D)``, ``context_idx (B, Nc)``, ``target_idx (B, Nt)`` -> ``(B, Nt, out_dim)``."""
        B, nt = target_idx.shape
        pos = self.pos.expand(B, -1, -1)
        x = self.embed(context) + apply_masks(pos, context_idx)
        m = self.mask_token.expand(B, nt, -1) + apply_masks(pos, target_idx)
        x = self.blocks(torch.cat([x, m], dim=1))
        return self.proj(self.norm(x[:, -nt:]))
