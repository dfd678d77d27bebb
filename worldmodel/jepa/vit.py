"""Vision Transformer encoders for small images, built on timm.

The encoder maps an image to one token per patch. Given patch indices it encodes
only those patches (I-JEPA's context encoder never sees mask tokens). Positions are
fixed 2D sin-cos embeddings, as in I-JEPA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from einops import rearrange
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from envs.config import check_patch_grid
from worldmodel.jepa.masks import apply_masks

# name -> (width, depth, heads)
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 2),  # for tests
    "small": (192, 4, 3),  # the CPU default
    "base": (384, 12, 6),  # for GPUs
}


@dataclass
class EncoderConfig:
    """Architecture of a ViT encoder.

    Attributes:
        size: ``tiny``, ``small`` or ``base`` (width, depth and heads from ``SIZES``).
        image_size: side of the square input image, pixels.
        patch_size: side of a square patch; ``image_size`` must be a multiple of it.
        in_chans: image channels.
        mlp_ratio: hidden width of each block's MLP, relative to the width.
    """

    size: str = "small"
    image_size: int = 64
    patch_size: int = 8
    in_chans: int = 3
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"unknown encoder size {self.size!r}; expected one of {list(SIZES)}")
        check_patch_grid(self.image_size, self.patch_size)

    @property
    def width(self) -> int:
        return SIZES[self.size][0]

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_pos_embed(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding ``(1, gh * gw, dim)``."""
    return build_sincos2d_pos_embed(list(grid), dim=dim).reshape(1, grid[0] * grid[1], dim)


class ViTEncoder(nn.Module):
    """Patch tokens of an image; optionally of a subset of its patches.

    ``forward(images, keep=None, normalized=False)``: ``images (B, C, H, W)`` uint8 (0-255), or
    with ``normalized=True`` floats already normalised by :func:`normalize_images`; ``keep (B, M)``
    patch indices. Returns ``(B, N or M, D)``.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        width, depth, heads = SIZES[cfg.size]
        self.vit = VisionTransformer(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            num_classes=0,
            global_pool="",
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=cfg.mlp_ratio,
            class_token=False,
            no_embed_class=True,
        )
        self.vit.pos_embed.requires_grad_(False)
        with torch.no_grad():
            self.vit.pos_embed.copy_(sincos_pos_embed(cfg.grid, width))
        self.width = width
        self.num_patches = cfg.grid[0] * cfg.grid[1]

    def check_images(self, images: torch.Tensor) -> None:
        c, s = self.cfg.in_chans, self.cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"images must have shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None, normalized: bool = False) -> torch.Tensor:
        self.check_images(images)
        if normalized and not images.is_floating_point():
            raise ValueError(f"normalized=True takes float images, got {images.dtype}")
        x = images if normalized else normalize_images(images)
        x = x.to(self.vit.patch_embed.proj.weight.dtype)
        x = self.vit.patch_embed(x)  # (B, N, D)
        x = x + self.vit.pos_embed
        if keep is not None:
            x = apply_masks(x, keep)
        x = self.vit.blocks(x)
        return self.vit.norm(x)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0-255) to float32 of roughly zero mean and unit scale.

    Anything but uint8 is an error: a float image could be in 0-1, in 0-255 or normalised
    already, and guessing wrong silently gives other features. Convert floats in 0-1 with
    ``(x * 255).round().to(torch.uint8)``, or pass normalised ones with ``normalized=True``.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0-255), got {images.dtype}; convert floats in [0, 1] with "
                         f"(x * 255).round().to(torch.uint8), or pass already normalised ones with normalized=True")
    return (images.float() / 255.0 - 0.5) / 0.25


def pool_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Mean over tokens: ``(B, N, D)`` -> ``(B, D)``."""
    return tokens.mean(dim=1)


def images_to_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Normalised pixels per patch: ``(B, C, H, W)`` -> ``(B, N, C * p * p)`` (the pixel-target ablation)."""
    x = normalize_images(images)
    return rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=patch_size, q=patch_size)
