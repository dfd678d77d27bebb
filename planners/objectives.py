"""Costs as small composable modules: goal distance in latent space, action penalty, weighted sum."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Rollout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (N, d), (N, H, a) -> (N, H, d)


class GoalDistance:
    """Squared distance (mean over latent dims) between predicted states and a goal state.

    Args:
        rollout: a model's open-loop rollout, ``(N, d), (N, H, a) -> (N, H, d)``.
        start: current states ``(B, d)``.
        goal: goal states ``(B, d)``.
        running_weight: weight of the mean distance over all steps, added to the
            terminal distance (0 = terminal only).
    """

    def __init__(self, rollout: Rollout, start: torch.Tensor, goal: torch.Tensor, running_weight: float = 0.0):
        if start.shape != goal.shape or start.ndim != 2:
            raise ValueError(f"start and goal must both be (B, d), got {tuple(start.shape)}, {tuple(goal.shape)}")
        self.rollout, self.start, self.goal, self.running_weight = rollout, start, goal, running_weight

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        B, S, H, _ = actions.shape
        s0 = self.start.repeat_interleave(S, dim=0)  # (B*S, d)
        states = self.rollout(s0, actions.reshape(B * S, H, -1)).view(B, S, H, -1)
        dist = ((states - self.goal[:, None, None]) ** 2).mean(-1)  # (B, S, H)
        return dist[..., -1] + self.running_weight * dist.mean(-1)


class ActionPenalty:
    """``weight * mean(a^2)`` over steps and action dimensions."""

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        return self.weight * (actions**2).mean((-1, -2))


class WeightedSum:
    """``sum_i w_i * cost_i(actions)``."""

    def __init__(self, terms: Sequence[tuple[float, Callable[[torch.Tensor], torch.Tensor]]]):
        self.terms = list(terms)

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        return sum(w * cost(actions) for w, cost in self.terms)
