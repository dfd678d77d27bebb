"""Schedules shared by every training run: learning rate, weight decay, EMA momentum, EMA update."""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine decay to ``cfg.min_lr``
    at ``cfg.steps`` (any config with those fields)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def weight_decay_at(step: int, cfg) -> float:
    """Cosine schedule from ``cfg.weight_decay`` to ``cfg.weight_decay_end`` (constant when equal)."""
    progress = min(1.0, step / max(1, cfg.steps))
    return cfg.weight_decay_end + (cfg.weight_decay - cfg.weight_decay_end) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_momentum(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine schedule from ``start`` at step 0 to ``end`` at ``total_steps``."""
    progress = min(1.0, step / max(1, total_steps))
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- tau * target + (1 - tau) * online``, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(tau).add_(o.detach(), alpha=1 - tau)
