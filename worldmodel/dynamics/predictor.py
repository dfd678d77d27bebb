"""The action-conditioned predictor: a residual MLP over one model step."""

from __future__ import annotations

import torch
from torch import nn

from worldmodel.dynamics.layout import StateLayout


def mlp(inp: int, hidden: int, out: int, layers: int, zero_last: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """``layers`` hidden layers of Linear, LayerNorm, GELU (and dropout when given), then a linear
    output, zeroed on request (an untrained residual predictor then says "nothing moves")."""
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
        mods += [nn.Dropout(dropout)] if dropout else []
        width = hidden
    last = nn.Linear(width, out)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*mods, last)


class BlockPredictor(nn.Module):
    """``f`` in ``z_{t+k} = z_t + f([s_t, A_t])``: the change of the newest frame latent over one
    action block, from the state and the block.

    An MLP (``depth`` hidden layers of ``hidden`` units, LayerNorm, GELU, optional dropout);
    its last layer starts at zero, so an untrained predictor says "nothing moves".
    """

    def __init__(self, layout: StateLayout, hidden: int, depth: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp(layout.state_dim + layout.block_dim, hidden, layout.latent_dim, depth, zero_last=True,
                       dropout=dropout)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``s (..., state_dim)``, ``a (..., block_dim)`` -> the latent's change ``(..., latent_dim)``."""
        return self.net(torch.cat([s, a], dim=-1))


def inverse_head(layout: StateLayout, hidden: int) -> nn.Module:
    """PLDM's inverse dynamics: the action block ``A_t`` from the state ``s_t`` and the next latent ``z_{t+k}``."""
    return nn.Sequential(nn.Linear(layout.state_dim + layout.latent_dim, hidden), nn.LayerNorm(hidden), nn.GELU(),
                         nn.Linear(hidden, layout.block_dim))
