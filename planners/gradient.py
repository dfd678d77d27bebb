"""Gradient-based planning: Adam on the action sequence through a differentiable cost."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planners.base import (CostFn, Generators, PlanResult, SamplingPlanner, evaluate_cost, finish, gaussian,
                           initial_mean)


@dataclass
class GradientConfig:
    """Adam on action sequences squashed into the bounds (``centre + half * tanh(u)``).

    Attributes:
        restarts: parallel sequences per problem (the first starts at the warm start
            or the centre, the others at random).
        steps: Adam steps.
        lr: Adam learning rate on the unsquashed variables.
    """

    restarts: int = 8
    steps: int = 50
    lr: float = 0.1

    def __post_init__(self):
        if self.restarts < 1 or self.steps < 1 or self.lr <= 0:
            raise ValueError(f"invalid gradient planner settings: {self}")


class GradientPlanner(SamplingPlanner):
    """Needs a differentiable ``cost``; respects the bounds by construction."""

    def plan(
        self, cost: CostFn, batch: int, generator: Generators, warm_start: torch.Tensor | None = None,
        iterations: int | None = None, proposal: torch.Tensor | None = None,
    ) -> PlanResult:
        """Minimise ``cost`` by Adam from ``warm_start`` (and random restarts); ``iterations`` replaces the
        configured Adam steps for this plan."""
        cfg, b = self.cfg, self.bounds
        start = initial_mean(batch, self.horizon, b, warm_start)
        ratio = ((start - b.centre) / b.half).clamp(-0.999, 0.999)
        u0 = torch.atanh(ratio).unsqueeze(1).repeat(1, cfg.restarts, 1, 1)
        u0[:, 1:] += gaussian(tuple(u0[:, 1:].shape), generator, u0)
        if proposal is not None and cfg.restarts > 1:  # a proposed plan starts the second restart
            u0[:, 1] = torch.atanh(((b.clamp(proposal.to(u0)) - b.centre) / b.half).clamp(-0.999, 0.999))
        u = u0.clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=cfg.lr)
        squash = lambda v: b.centre + b.half * torch.tanh(v)  # noqa: E731
        for _ in range(iterations or cfg.steps):
            opt.zero_grad(set_to_none=True)
            cost(squash(u)).sum().backward()
            opt.step()
        with torch.no_grad():
            actions = squash(u)
            c = evaluate_cost(cost, actions)
            i = c.argmin(1)
            rows = torch.arange(batch, device=actions.device)
            return finish(actions[rows, i], c[rows, i])
