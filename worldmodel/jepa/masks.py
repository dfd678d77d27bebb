"""Multi-block masking (I-JEPA) as pure functions of a generator and the patch grid.

Patches are numbered row-major on a ``(gh, gw)`` grid. A batch of masks is a pair

- ``context``: ``(B, Nc) int64`` indices of the visible patches per sample;
- ``targets``: a list of K ``(B, Nt_k) int64`` tensors, the indices of each target block.

As in I-JEPA, each target block's shape (scale, aspect ratio) is drawn once per batch
and its position per sample, so every sample has the same ``Nt_k``; context sets lose
different numbers of patches to the targets, so all are cut to the smallest count
(keeping a random subset) to stack into one tensor. Context and targets never share a
patch. :func:`apply_masks` is the one gather that applies any of these indices.

On scenes that are mostly empty floor (Push-T: a small agent and a T on white), blocks
placed uniformly hide floor most of the time and the loss is met by predicting floor.
``content_bias`` places that fraction of the target blocks in proportion to the content
they cover instead: a per-patch weight (:func:`patch_content`, how far each patch is from
the dataset's static background) summed over the block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MaskConfig:
    """Masking settings (I-JEPA's defaults).

    Attributes:
        strategy: ``blocks`` (multi-block) or ``random`` (random patches with the same
            counts; an ablation).
        num_targets: target blocks K per image.
        target_scale: range of a target block's area, as a fraction of the grid.
        target_aspect: range of a target block's aspect ratio (height / width).
        context_scale: range of the context block's area before targets are removed.
        min_context: fewest context patches kept (a draw leaving fewer is redrawn).
        content_bias: probability that a target block is placed in proportion to the
            content it covers (needs per-patch weights) rather than uniformly; 0 is I-JEPA.
    """

    strategy: str = "blocks"
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_context: int = 4
    content_bias: float = 0.0

    def __post_init__(self):
        self.target_scale, self.target_aspect = tuple(self.target_scale), tuple(self.target_aspect)
        self.context_scale = tuple(self.context_scale)
        if self.strategy not in ("blocks", "random"):
            raise ValueError(f"mask strategy must be 'blocks' or 'random', got {self.strategy!r}")
        if self.num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {self.num_targets}")
        for name in ("target_scale", "target_aspect", "context_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi or (name != "target_aspect" and hi > 1):
                raise ValueError(f"{name} must be an increasing range in (0, 1] (aspect: > 0), got {(lo, hi)}")
        if not 0.0 <= self.content_bias <= 1.0:
            raise ValueError(f"content_bias must be in [0, 1], got {self.content_bias}")
        if self.content_bias > 0 and self.strategy != "blocks":
            raise ValueError(f"content_bias applies to the 'blocks' strategy, got strategy={self.strategy!r}")


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def _block_shape(generator: torch.Generator, grid: tuple[int, int], scale, aspect) -> tuple[int, int]:
    gh, gw = grid
    area = _uniform(generator, *scale) * gh * gw
    ratio = math.exp(_uniform(generator, math.log(aspect[0]), math.log(aspect[1])))
    h = max(1, min(gh, round(math.sqrt(area * ratio))))
    w = max(1, min(gw, round(math.sqrt(area / ratio))))
    return h, w


def _place(generator: torch.Generator, grid: tuple[int, int], shape: tuple[int, int],
           weights: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean ``(gh, gw)`` map of a block of ``shape`` at a random position: uniform, or with
    probability proportional to the sum of ``weights (gh, gw)`` it covers."""
    gh, gw = grid
    h, w = shape
    if weights is None:
        top = int(torch.randint(0, gh - h + 1, (), generator=generator))
        left = int(torch.randint(0, gw - w + 1, (), generator=generator))
    else:
        mass = torch.nn.functional.avg_pool2d(weights[None, None].double(), (h, w), stride=1)[0, 0].flatten()
        pos = int(torch.multinomial(mass + 1e-12, 1, generator=generator))
        top, left = divmod(pos, gw - w + 1)
    m = torch.zeros(gh, gw, dtype=torch.bool)
    m[top : top + h, left : left + w] = True
    return m


def sample_masks(
    generator: torch.Generator, batch: int, grid: tuple[int, int], cfg: MaskConfig | None = None,
    content: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Context ``(B, Nc)`` and K target ``(B, Nt_k)`` patch indices for a batch (I-JEPA's defaults if no cfg).

    ``content (B, gh, gw)``: non-negative per-patch weights, required when ``cfg.content_bias > 0``.
    """
    cfg = cfg or MaskConfig()
    gh, gw = grid
    n = gh * gw
    if cfg.content_bias > 0:
        if content is None or tuple(content.shape) != (batch, gh, gw):
            got = None if content is None else tuple(content.shape)
            raise ValueError(f"content_bias={cfg.content_bias} needs per-patch content of shape {(batch, gh, gw)}, "
                             f"got {got}")
        if (content < 0).any() or not torch.isfinite(content).all():
            raise ValueError("per-patch content weights must be finite and >= 0")
    if cfg.strategy == "random":
        return _random_masks(generator, batch, n, cfg)
    t_shapes = [_block_shape(generator, grid, cfg.target_scale, cfg.target_aspect) for _ in range(cfg.num_targets)]
    c_shape = _block_shape(generator, grid, cfg.context_scale, (1.0, 1.0))
    contexts, targets = [], []
    for b in range(batch):
        for _attempt in range(100):
            if cfg.content_bias > 0:
                by_content = (torch.rand(len(t_shapes), generator=generator) < cfg.content_bias).tolist()
                t_maps = [_place(generator, grid, s, content[b] if c and content[b].sum() > 0 else None)
                          for s, c in zip(t_shapes, by_content)]
            else:
                t_maps = [_place(generator, grid, s) for s in t_shapes]
            ctx = _place(generator, grid, c_shape) & ~torch.stack(t_maps).any(0)
            if ctx.sum() >= cfg.min_context:
                break
        else:
            raise RuntimeError(f"no context of >= {cfg.min_context} patches left after 100 draws on grid {grid}")
        contexts.append(ctx.flatten().nonzero().squeeze(1))
        targets.append([m.flatten().nonzero().squeeze(1) for m in t_maps])
    keep = min(len(c) for c in contexts)
    context = torch.stack([_subset(generator, c, keep) for c in contexts])
    return context, [torch.stack([t[k] for t in targets]) for k in range(cfg.num_targets)]


def _subset(generator: torch.Generator, idx: torch.Tensor, keep: int) -> torch.Tensor:
    """``keep`` of ``idx`` chosen at random, in increasing order."""
    if len(idx) == keep:
        return idx
    pick = torch.randperm(len(idx), generator=generator)[:keep]
    return idx[pick.sort().values]


def _random_masks(
    generator: torch.Generator, batch: int, n: int, cfg: MaskConfig
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random patches with the block strategy's expected counts (the ablation)."""
    nt = max(1, round(n * sum(cfg.target_scale) / 2))
    nc = max(cfg.min_context, round(n * sum(cfg.context_scale) / 2 * (1 - sum(cfg.target_scale) / 2) ** cfg.num_targets))
    nc = min(nc, n - nt)
    contexts, targets = [], []
    for _ in range(batch):
        tgt = [torch.randperm(n, generator=generator)[:nt] for _ in range(cfg.num_targets)]
        used = torch.zeros(n, dtype=torch.bool)
        for t in tgt:
            used[t] = True
        free = (~used).nonzero().squeeze(1)
        if len(free) < cfg.min_context:
            raise RuntimeError(f"random targets cover the grid; no {cfg.min_context} context patches remain")
        contexts.append(free)
        targets.append([t.sort().values for t in tgt])
    keep = min(nc, min(len(c) for c in contexts))
    context = torch.stack([_subset(generator, c, keep) for c in contexts])
    return context, [torch.stack([t[k] for t in targets]) for k in range(cfg.num_targets)]


def patch_content(images: torch.Tensor, background: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch content ``(B, gh, gw)``: the mean absolute difference of ``images (B, C, H, W)``
    from a static ``background (C, H, W)`` (e.g. the per-pixel median of the dataset's frames)."""
    if images.shape[1:] != background.shape:
        raise ValueError(f"background of shape {tuple(background.shape)} does not match images {tuple(images.shape)}")
    diff = (images.float() - background.to(images.device, torch.float32)).abs().mean(1, keepdim=True)
    return torch.nn.functional.avg_pool2d(diff, patch_size)[:, 0]


def apply_masks(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather tokens: ``x (B, N, D)``, ``idx (B, M)`` -> ``(B, M, D)``."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
