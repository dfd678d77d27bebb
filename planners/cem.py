"""The cross-entropy method over action sequences."""

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
class CEMConfig:
    """Cross-entropy method.

    Attributes:
        samples: candidates per iteration.
        elites: best candidates that refit the Gaussian (at least 2).
        iterations: refits per plan.
        init_std: initial std, in half-widths of the action box.
        min_std: floor on the std, in half-widths (keeps the search alive).
        momentum: weight of the previous mean/std in each refit (0 = none).
    """

    samples: int = 300
    elites: int = 30
    iterations: int = 10
    init_std: float = 1.0
    min_std: float = 0.05
    momentum: float = 0.0

    def __post_init__(self):
        if not 2 <= self.elites <= self.samples:
            raise ValueError(f"need 2 <= elites <= samples, got elites={self.elites}, samples={self.samples}")
        if self.iterations < 1 or self.init_std <= 0 or self.min_std < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"invalid CEM settings: {self}")


class CEM(SamplingPlanner):
    """Samples Gaussian action sequences, keeps the elites, refits, repeats (``CEM(cfg, horizon, bounds)``)."""

    @torch.no_grad()
    def plan(
        self, cost: CostFn, batch: int, generator: Generators, warm_start: torch.Tensor | None = None,
        iterations: int | None = None, proposal: torch.Tensor | None = None,
    ) -> PlanResult:
        """Minimise ``cost`` for ``batch`` problems; ``warm_start (B, H, A)`` seeds the mean; ``iterations``
        replaces the configured number for this plan."""
        cfg, b = self.cfg, self.bounds
        mean = initial_mean(batch, self.horizon, b, warm_start)
        std = (cfg.init_std * b.half).expand_as(mean).clone()  # (B, H, A)
        best_a, best_c = no_plan_yet(mean)
        for _ in range(iterations or cfg.iterations):
            noise = gaussian((batch, cfg.samples) + mean.shape[1:], generator, mean)
            cand = b.clamp(mean.unsqueeze(1) + std.unsqueeze(1) * noise)
            cand[:, 0] = mean  # the current mean is always a candidate
            propose(cand, proposal, b)  # and a proposed plan, where one is given
            c = evaluate_cost(cost, cand)
            top = c.topk(cfg.elites, dim=1, largest=False)
            elites = torch.gather(cand, 1, top.indices[..., None, None].expand(-1, -1, *cand.shape[2:]))
            best_a, best_c = keep_best(best_a, best_c, cand, c)
            m = cfg.momentum
            mean = m * mean + (1 - m) * elites.mean(1)
            std = (m * std + (1 - m) * elites.std(1)).clamp_min(cfg.min_std * float(b.half.min()))
        return finish(best_a, best_c)
