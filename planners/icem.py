"""iCEM: the improved cross-entropy method (Pinneri et al., 2020), over action sequences.

What it changes from :class:`planners.cem.CEM`, each a setting:

- **coloured noise** over the plan's time axis (power spectrum ``1 / f^beta``): with ``beta > 0``
  neighbouring steps of a candidate are correlated, so fewer samples explore smooth motions;
- **fewer samples each iteration** (``samples * decay^-i``, at least twice the elites);
- **elites kept** from one iteration to the next (a fraction ``keep_elites``), so a good candidate
  is not lost to the redraw;
- a **small momentum** on the mean and std.

With the warm start of the MPC agent (the previous plan, shifted) as the first mean, a few
iterations suffice after an episode's first plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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
class ICEMConfig:
    """iCEM.

    Attributes:
        samples: candidates in the first iteration.
        elites: best candidates that refit the Gaussian (at least 2).
        iterations: refits per plan.
        decay: the candidates of iteration ``i`` are ``samples * decay^-i`` (at least ``2 * elites``).
        beta: colour of the noise over the plan's steps (0: white, as CEM; 1: pink; 2: brown).
        keep_elites: fraction of the elites carried into the next iteration's candidates.
        init_std: initial std, in half-widths of the action box.
        min_std: floor on the std, in half-widths.
        momentum: weight of the previous mean/std in each refit.
    """

    samples: int = 300
    elites: int = 30
    iterations: int = 3
    decay: float = 1.25
    beta: float = 1.0
    keep_elites: float = 0.3
    init_std: float = 1.0
    min_std: float = 0.05
    momentum: float = 0.1

    def __post_init__(self):
        if not 2 <= self.elites <= self.samples:
            raise ValueError(f"need 2 <= elites <= samples, got elites={self.elites}, samples={self.samples}")
        if self.iterations < 1 or self.decay < 1 or self.beta < 0 or not 0 <= self.keep_elites <= 1:
            raise ValueError(f"need iterations >= 1, decay >= 1, beta >= 0 and keep_elites in [0, 1], got {self}")
        if self.init_std <= 0 or self.min_std < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need init_std > 0, min_std >= 0 and momentum in [0, 1), got {self}")

    def samples_at(self, i: int) -> int:
        """Candidates drawn in iteration ``i`` (0-based)."""
        return max(2 * self.elites, round(self.samples * self.decay ** -i)) if i else self.samples


@lru_cache(maxsize=32)
def _colour(horizon: int, beta: float) -> torch.Tensor:
    """``L (H, H)``: ``L @ white`` is stationary noise over ``H`` steps with unit variance and a power
    spectrum ``1 / f^beta`` (periodic; the lowest frequency stands in for ``f = 0``)."""
    if beta == 0 or horizon == 1:
        return torch.eye(horizon, dtype=torch.float64)
    k = torch.arange(horizon, dtype=torch.float64)
    f = torch.minimum(k, horizon - k) / horizon  # the frequency of each Fourier component
    psd = f.clamp_min(1.0 / horizon) ** -beta
    lag = k[:, None] - k[None, :]
    cov = (psd[None, None, :] * torch.cos(2 * torch.pi * lag[..., None] * k / horizon)).sum(-1)
    cov = cov / cov.diagonal()[:, None].sqrt() / cov.diagonal()[None, :].sqrt()
    return torch.linalg.cholesky(cov + 1e-9 * torch.eye(horizon, dtype=torch.float64))


def coloured(shape: tuple[int, ...], beta: float, generator: Generators, like: torch.Tensor) -> torch.Tensor:
    """Unit-variance noise of ``shape (B, S, H, A)``, correlated over ``H`` as ``beta`` says."""
    white = gaussian(shape, generator, like)
    if beta == 0:
        return white
    return torch.einsum("ij,bsja->bsia", _colour(shape[2], float(beta)).to(white), white)


class ICEM(SamplingPlanner):
    """iCEM (``ICEM(cfg, horizon, bounds)``): CEM with coloured noise, shrinking populations and kept elites."""

    @torch.no_grad()
    def plan(
        self, cost: CostFn, batch: int, generator: Generators, warm_start: torch.Tensor | None = None,
        iterations: int | None = None, proposal: torch.Tensor | None = None,
    ) -> PlanResult:
        """Minimise ``cost`` for ``batch`` problems; ``warm_start (B, H, A)`` seeds the mean; ``iterations``
        replaces the configured number for this plan."""
        cfg, b = self.cfg, self.bounds
        mean = initial_mean(batch, self.horizon, b, warm_start)
        std = (cfg.init_std * b.half).expand_as(mean).clone()
        best_a, best_c = no_plan_yet(mean)
        kept = mean.new_zeros((batch, 0) + mean.shape[1:])  # no elites yet
        keep = round(cfg.keep_elites * cfg.elites)
        for i in range(iterations or cfg.iterations):
            n = cfg.samples_at(i)
            noise = coloured((batch, n) + mean.shape[1:], cfg.beta, generator, mean)
            cand = b.clamp(mean.unsqueeze(1) + std.unsqueeze(1) * noise)
            cand[:, 0] = mean  # the current mean is always a candidate
            propose(cand, proposal, b)  # and a proposed plan, where one is given
            cand = torch.cat([cand, kept], 1)
            c = evaluate_cost(cost, cand)
            top = c.topk(cfg.elites, dim=1, largest=False)
            elites = torch.gather(cand, 1, top.indices[..., None, None].expand(-1, -1, *cand.shape[2:]))
            best_a, best_c = keep_best(best_a, best_c, cand, c)
            kept = elites[:, :keep]
            m = cfg.momentum
            mean = m * mean + (1 - m) * elites.mean(1)
            std = (m * std + (1 - m) * elites.std(1)).clamp_min(cfg.min_std * float(b.half.min()))
        return finish(best_a, best_c)
