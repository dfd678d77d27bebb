"""Guarding against representation collapse: a regulariser that prevents it and statistics that detect it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RepresentationCollapse(RuntimeError):
    """The representations stopped varying across inputs."""


def variance_covariance(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance (hinge on per-dimension std at 1) plus covariance (off-diagonal) terms of ``z (n, d)``."""
    z = z - z.mean(0)
    std = torch.sqrt(z.var(0) + eps)
    var = F.relu(1 - std).mean()
    cov = (z.T @ z) / max(1, len(z) - 1)
    off = cov - torch.diag(torch.diag(cov))
    return var + off.pow(2).sum() / z.shape[1]


def embedding_stats(embeddings: torch.Tensor) -> dict[str, float]:
    """Collapse statistics of a batch of embeddings ``(B, D)``.

    ``std``: mean over dimensions of the per-dimension std across the batch.
    ``effective_rank``: exp of the entropy of the normalised singular values of the
    centred batch (1 when every embedding lies on one line, D when spread evenly).
    """
    z = embeddings.float()
    z = z - z.mean(0)
    std = z.std(0).mean().item()
    s = torch.linalg.svdvals(z)
    if s.sum() <= 1e-12:
        return {"std": std, "effective_rank": 0.0}
    p = s / s.sum()
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum().item()
    return {"std": std, "effective_rank": math.exp(entropy)}
