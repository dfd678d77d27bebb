"""What every planner shares: the cost protocol, bounds, warm starts, results.

Device and dtype follow the inputs: a planner works on the device and in the dtype of
its :class:`Bounds` (move them with ``bounds.to(device, dtype)``), and every tensor it
creates is created there. Random draws come from the caller's ``torch.Generator`` on its
own device and are then moved, so a CPU generator gives the same plans on every device. A
sequence of generators, one per problem, draws each problem's noise from its own: a batch of
problems then plans exactly as each would alone (up to the float noise of batched arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, Union

import torch

Generators = Union[torch.Generator, Sequence[torch.Generator]]  # one for the batch, or one per problem


class CostFn(Protocol):
    """Cost of candidate action sequences.

    ``cost(actions)``: ``actions (B, S, H, A)`` for B problems, S candidates each,
    horizon H, action size A -> ``(B, S)`` costs (lower is better).
    """

    def __call__(self, actions: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Bounds:
    """Box bounds of one action, ``low`` and ``high`` of shape ``(A,)``.

    Arrays and lists become float32 CPU tensors; floating tensors keep their device and dtype.
    """

    low: torch.Tensor
    high: torch.Tensor

    def __post_init__(self):
        self.low, self.high = as_float_tensor(self.low), as_float_tensor(self.high).to(as_float_tensor(self.low))
        if self.low.shape != self.high.shape or self.low.ndim != 1 or not bool((self.low < self.high).all()):
            raise ValueError(f"need 1-d low < high of equal shape, got {self.low.tolist()} and {self.high.tolist()}")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Bounds":
        """The same bounds on ``device`` in ``dtype``."""
        return Bounds(self.low.to(device=device, dtype=dtype), self.high.to(device=device, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return self.low.device

    @property
    def dtype(self) -> torch.dtype:
        return self.low.dtype

    @property
    def centre(self) -> torch.Tensor:
        return (self.low + self.high) / 2

    @property
    def half(self) -> torch.Tensor:
        return (self.high - self.low) / 2

    def clamp(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(actions, self.high.to(actions)), self.low.to(actions))


@dataclass
class PlanResult:
    """The best plan per problem: ``actions (B, H, A)`` and its ``cost (B,)``."""

    actions: torch.Tensor
    cost: torch.Tensor


class NonFiniteCost(FloatingPointError):
    """Every candidate plan of a problem had a NaN or infinite cost: there is nothing to choose from."""


def finish(actions: torch.Tensor, cost: torch.Tensor) -> PlanResult:
    """The planners' result, checked once per plan: a problem whose best cost is not finite saw no
    candidate with a finite cost (NaN costs count as infinite), so its "plan" would be arbitrary."""
    bad = ~torch.isfinite(cost)
    if bool(bad.any()):
        problems = torch.nonzero(bad).flatten().tolist()
        raise NonFiniteCost(f"every candidate's cost was NaN or inf for problems {problems[:10]} of {cost.shape[0]}; "
                            f"the cost function (or the model's states) produce non-finite values")
    return PlanResult(actions=actions, cost=cost)


def as_float_tensor(x) -> torch.Tensor:
    """A floating tensor stays as it is; anything else becomes a float32 CPU tensor."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x
    return torch.as_tensor(x, dtype=torch.float32)


def gaussian(shape: tuple[int, ...], generator: Generators, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on its device, float32), then moved to ``like``'s
    device and dtype. With one generator per problem (``shape[0]`` of them), problem ``i``'s noise
    ``(1, *shape[1:])`` comes from generator ``i``."""
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device).to(like)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} problems; give one per problem")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device).to(like) for g in generator])


def shift_plan(plan: torch.Tensor, steps: int, bounds: Bounds) -> torch.Tensor:
    """Warm start: drop the first ``steps`` actions of ``plan (B, H, A)``, pad the end with the bounds' centre."""
    if not 0 <= steps <= plan.shape[1]:
        raise ValueError(f"cannot shift a plan of horizon {plan.shape[1]} by {steps} steps")
    pad = bounds.centre.to(plan).expand(plan.shape[0], steps, -1)
    return torch.cat([plan[:, steps:], pad], dim=1)


def initial_mean(batch: int, horizon: int, bounds: Bounds, warm: torch.Tensor | None) -> torch.Tensor:
    """``(B, H, A)`` on the bounds' device and in their dtype: the warm start when given (checked),
    else the bounds' centre."""
    if warm is None:
        return bounds.centre.expand(batch, horizon, -1).clone()
    expected = (batch, horizon, bounds.low.shape[0])
    if tuple(warm.shape) != expected:
        raise ValueError(f"warm start must have shape {expected}, got {tuple(warm.shape)}")
    return bounds.clamp(warm.to(device=bounds.device, dtype=bounds.dtype).clone())


def evaluate_cost(cost: CostFn, actions: torch.Tensor) -> torch.Tensor:
    """Call ``cost`` and check what it returns."""
    values = cost(actions)
    if tuple(values.shape) != tuple(actions.shape[:2]):
        raise ValueError(f"cost returned shape {tuple(values.shape)}, expected {tuple(actions.shape[:2])} (B, S)")
    if not torch.isfinite(values).all():
        values = torch.nan_to_num(values, nan=float("inf"), posinf=float("inf"), neginf=float("inf"))
    return values


class SamplingPlanner:
    """Holds what every planner is built from: its settings, the horizon and the bounds."""

    def __init__(self, cfg, horizon: int, bounds: Bounds):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.cfg, self.horizon, self.bounds = cfg, horizon, bounds


def propose(candidates: torch.Tensor, proposal: torch.Tensor | None, bounds: Bounds) -> torch.Tensor:
    """Candidates ``(B, S, H, A)`` with a proposed plan ``(B, H, A)`` (e.g. an amortized policy's) as
    candidate 1 of each problem, beside the mean at 0 (nothing changes without one, or with one candidate)."""
    if proposal is not None and candidates.shape[1] > 1:
        if tuple(proposal.shape) != (candidates.shape[0], *candidates.shape[2:]):
            raise ValueError(f"a proposal must have shape {(candidates.shape[0], *candidates.shape[2:])}, got "
                             f"{tuple(proposal.shape)}")
        candidates[:, 1] = bounds.clamp(proposal.to(candidates))
    return candidates


def no_plan_yet(mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting point of :func:`keep_best`: ``mean (B, H, A)`` at infinite cost."""
    return mean.clone(), torch.full(mean.shape[:1], float("inf"), device=mean.device, dtype=mean.dtype)


def keep_best(
    best_actions: torch.Tensor, best_cost: torch.Tensor, candidates: torch.Tensor, costs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per problem, the lowest-cost sequence seen so far: ``candidates (B, S, H, A)``, ``costs (B, S)``."""
    i = costs.argmin(1)
    c = costs.gather(1, i[:, None]).squeeze(1)
    better = c < best_cost
    best_actions = best_actions.clone()
    best_actions[better] = candidates[better, i[better]]
    return best_actions, torch.where(better, c, best_cost)
