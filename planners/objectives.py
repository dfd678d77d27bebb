"""Costs as small composable modules: goal distance in latent space, action penalty, weighted sum."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Rollout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (N, d), (N, H, a) -> (N, H, d)


REDUCTIONS = ("min", "terminal", "mean")


class GoalDistance:
    """Squared distance (mean over latent dims) between predicted states and a goal state,
    reduced over the plan's steps.

    Args:
        rollout: a model's open-loop rollout, ``(N, d), (N, H, a) -> (N, H, d)``.
        start: current states ``(B, d)``.
        goal: goal states ``(B, d')``, compared with the rollout's ``(..., d')`` outputs.
        reduce: ``min`` (the closest the plan comes to the goal: reaching it at any
            step counts, as in the goal-image protocol), ``terminal`` (the last
            step), or ``mean`` (all steps alike).
        mean_weight: weight of the mean over steps added to that (a progress term: of two plans
            that come equally close, the one that gets there sooner costs less).
    """

    def __init__(self, rollout: Rollout, start: torch.Tensor, goal: torch.Tensor, reduce: str = "min",
                 mean_weight: float = 0.0):
        if start.ndim != 2 or goal.ndim != 2 or len(start) != len(goal):
            raise ValueError(f"start and goal must be (B, d) and (B, d'), got {tuple(start.shape)}, {tuple(goal.shape)}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.rollout, self.start, self.goal, self.reduce = rollout, start, goal, reduce
        self.mean_weight = mean_weight

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        B, S, H, _ = actions.shape
        s0 = self.start.repeat_interleave(S, dim=0)  # (B*S, d)
        states = self.rollout(s0, actions.reshape(B * S, H, -1)).view(B, S, H, -1)
        dist = ((states - self.goal[:, None, None]) ** 2).mean(-1)  # (B, S, H)
        if self.reduce == "min":
            cost = dist.min(-1).values
        else:
            cost = dist[..., -1] if self.reduce == "terminal" else dist.mean(-1)
        return cost + self.mean_weight * dist.mean(-1) if self.mean_weight else cost


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
