"""Model-predictive path integral control over action sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planners.base import (
    CostFn,
    Generators,
    PlanResult,
    SamplingPlanner,
    evaluate_cost,
    finish,
    gaussian,
    initial_mean,
    keep_best,
    no_plan_yet,
    propose,
)


@dataclass
class MPPIConfig:
    """MPPI.

    Attributes:
        samples: candidates per iteration.
        iterations: updates per plan.
        noise_std: exploration std, in half-widths of the action box.
        temperature: softmax temperature on costs, relative to each iteration's cost spread.
        std_decay: the noise std is multiplied by this after each iteration.
    """

    samples: int = 300
    iterations: int = 6
    noise_std: float = 0.5
    temperature: float = 0.1
    std_decay: float = 0.8

    def __post_init__(self):
        if self.samples < 2 or self.iterations < 1 or self.noise_std <= 0 or self.temperature <= 0:
            raise ValueError(f"invalid MPPI settings: {self}")
        if not 0 < self.std_decay <= 1:
            raise ValueError(f"std_decay must be in (0, 1], got {self.std_decay}")


class MPPI(SamplingPlanner):
    """Perturbs the mean plan, averages the perturbations weighted by exp(-cost / temperature)."""

    @torch.no_grad()
    def plan(
        self, cost: CostFn, batch: int, generator: Generators, warm_start: torch.Tensor | None = None,
        iterations: int | None = None, proposal: torch.Tensor | None = None,
    ) -> PlanResult:
        cfg, b = self.cfg, self.bounds
        mean = initial_mean(batch, self.horizon, b, warm_start)
        std = cfg.noise_std * b.half
        best_a, best_c = no_plan_yet(mean)
        for _ in range(iterations or cfg.iterations):
            noise = gaussian((batch, cfg.samples) + mean.shape[1:], generator, mean)
            cand = b.clamp(mean.unsqueeze(1) + std * noise)
            cand[:, 0] = mean
            propose(cand, proposal, b)  # and a proposed plan, where one is given
            c = evaluate_cost(cost, cand)
            lo = c.min(1, keepdim=True).values
            spread = (c.median(1, keepdim=True).values - lo).clamp_min(1e-8)
            w = torch.softmax(-(c - lo) / (cfg.temperature * spread), dim=1)  # (B, S)
            mean = (w[..., None, None] * cand).sum(1)
            best_a, best_c = keep_best(best_a, best_c, cand, c)
            std = std * cfg.std_decay
        final = evaluate_cost(cost, mean.unsqueeze(1)).squeeze(1)
        use_mean = final <= best_c
        best_a[use_mean], best_c = mean[use_mean], torch.where(use_mean, final, best_c)
        return finish(best_a, best_c)
