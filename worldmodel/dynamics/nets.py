"""The trained networks of frame encoders: :class:`KeypointHead` (the head over a pooled feature grid)
and :class:`ConvNet` (the conv encoder's whole net)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from worldmodel.jepa.vit import normalize_images


class KeypointHead(nn.Module):
    """Where things are on a feature grid: the flat features ``(..., c*h*w)`` unflattened by ``grid``, a
    stride-2 4x4 convolution (``width`` channels, GroupNorm, GELU) and a 3x3 one to ``width`` keypoint maps,
    each map's soft-argmax position ``(x, y)`` in [-1, 1] (a learned temperature per map), then an MLP
    (``hidden``, LayerNorm) onto ``out_dim``. The positions are the same function wherever an object
    is and resolve it finer than a cell (the spatial soft-argmax of Levine et al. 2016, diffusion policy's
    Push-T encoder).

    Args:
        pattern: how the flat features order their ``c`` channels on the ``h x w`` grid (an einops group such
            as ``"(c h w)"``), with ``sizes`` c, h and w.
    """

    def __init__(self, pattern: str, sizes: dict[str, int], width: int, hidden: int, out_dim: int):
        super().__init__()
        self.pattern, self.sizes = f"n {pattern} -> n c h w", dict(sizes)
        c, h, w = sizes["c"], sizes["h"], sizes["w"]
        if h < 4 or w < 4:
            raise ValueError(f"the keypoint head needs a grid of at least 4 x 4 cells, got {h} x {w} (raise pool)")
        self.conv = nn.Sequential(nn.Conv2d(c, width, 4, stride=2, padding=1), nn.GroupNorm(8, width), nn.GELU(),
                                  nn.Conv2d(width, width, 3, padding=1))
        self.log_temperature = nn.Parameter(torch.zeros(width))
        hh, ww = h // 2, w // 2
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, hh), torch.linspace(-1, 1, ww), indexing="ij")
        self.register_buffer("coords", torch.stack([xs.flatten(), ys.flatten()], -1))  # (hh*ww, 2)
        self.mlp = nn.Sequential(nn.Linear(2 * width, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        maps = self.conv(rearrange(x.reshape(-1, x.shape[-1]), self.pattern, **self.sizes))  # (n, k, hh, ww)
        logits = maps.flatten(2) * self.log_temperature.exp()[:, None]
        points = logits.softmax(-1) @ self.coords.to(logits.dtype)  # (n, k, 2)
        return self.mlp(points.flatten(1)).reshape(*lead, -1)


class ConvNet(nn.Module):
    """A small conv net from images ``(..., C, H, W)`` uint8 to vectors ``(..., out_dim)``.

    Four stride-2 4x4 convolutions (``width``, 2, 4, 4 x ``width`` channels, GroupNorm, GELU)
    take a ``H x W`` image to an ``H/16 x W/16`` map, which an MLP (``hidden``, LayerNorm)
    flattens onto ``out_dim``. Keeping the map (no global pooling) keeps where things are.
    """

    def __init__(self, image_shape: tuple[int, int, int], out_dim: int, width: int = 32, hidden: int = 512):
        super().__init__()
        c, h, w = image_shape
        if h % 16 or w % 16:
            raise ValueError(f"image height and width must be multiples of 16, got {h}x{w}")
        self.image_shape = (c, h, w)
        layers: list[nn.Module] = []
        for out in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(c, out, 4, stride=2, padding=1), nn.GroupNorm(8, out), nn.GELU()]
            c = out
        self.conv = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c * (h // 16) * (w // 16), hidden), nn.LayerNorm(hidden),
                                 nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-3:]) != self.image_shape:
            raise ValueError(f"images must have shape (..., {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(images.shape)}")
        lead = images.shape[:-3]
        weight = self.conv[0].weight
        x = normalize_images(images.reshape(-1, *self.image_shape)).to(weight.dtype)
        return self.mlp(self.conv(x)).reshape(*lead, -1)
