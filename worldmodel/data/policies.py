"""Behaviour policies for offline data collection.

Most of the toolkit's behaviour policies are open-loop random processes: an episode's
whole action sequence is drawn up front from a ``numpy.random.Generator``. The
``expert`` policy is closed loop: it acts on the flat state at every step, through the
env's scripted expert (``EnvSpec.expert``), with its own noise. Either way a collected
episode is a pure function of (episode seed, policy), independent of how many
environments run in parallel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Protocol

import numpy as np


class BehaviourPolicy(Protocol):
    """Draws one episode's actions."""

    name: str

    def sample(self, rng: np.random.Generator, steps: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Actions ``(steps, A)`` float32 within ``[low, high]``."""
        ...

    def params(self) -> dict:
        """Settings that define the policy (stored in dataset manifests)."""
        ...


@dataclass(frozen=True)
class UniformPolicy:
    """I.i.d. uniform actions over the box, as the peers' Reacher datasets use."""

    name: str = "uniform"

    def sample(self, rng: np.random.Generator, steps: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(steps, len(low))).astype(np.float32)

    def params(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CorrelatedPolicy:
    """Temporally-correlated Gaussian noise (a stationary AR(1) process), clipped to the box.

    ``x[t+1] = beta * x[t] + sqrt(1 - beta^2) * sigma * eps``, with ``x`` scaled to the
    box's half-width around its centre. Smoother torques than uniform noise: the arm
    makes long sweeps instead of jittering, which covers the state space differently.

    Attributes:
        beta: correlation between consecutive actions, in [0, 1).
        sigma: stationary standard deviation, in units of the box's half-width.
    """

    beta: float = 0.8
    sigma: float = 0.3
    name: str = "correlated"

    def __post_init__(self):
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {self.beta}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")

    def sample(self, rng: np.random.Generator, steps: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        eps = rng.standard_normal((steps, len(low)))
        x = np.empty_like(eps)
        x[0] = self.sigma * eps[0]
        scale = np.sqrt(1.0 - self.beta**2) * self.sigma
        for t in range(1, steps):
            x[t] = self.beta * x[t - 1] + scale * eps[t]
        centre, half = (high + low) / 2, (high - low) / 2
        return np.clip(centre + half * x, low, high).astype(np.float32)

    def params(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MixedPolicy:
    """Each episode is uniform with probability ``uniform_fraction``, otherwise correlated.

    Uniform noise jitters in place and covers the neighbourhood densely; correlated noise
    makes long runs that carry the agent far (in a maze: through corridors into other
    cells). A mixture gives both in one dataset.

    Attributes:
        uniform_fraction: probability that an episode is uniform, in [0, 1].
        beta, sigma: the correlated episodes' ``CorrelatedPolicy`` settings.
    """

    uniform_fraction: float = 0.5
    beta: float = 0.95
    sigma: float = 0.5
    name: str = "mixed"

    def __post_init__(self):
        if not 0.0 <= self.uniform_fraction <= 1.0:
            raise ValueError(f"uniform_fraction must be in [0, 1], got {self.uniform_fraction}")
        CorrelatedPolicy(self.beta, self.sigma)  # checks them

    def sample(self, rng: np.random.Generator, steps: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        if rng.random() < self.uniform_fraction:
            return UniformPolicy().sample(rng, steps, low, high)
        return CorrelatedPolicy(self.beta, self.sigma).sample(rng, steps, low, high)

    def params(self) -> dict:
        return asdict(self)


Controller = Callable[[np.ndarray], np.ndarray]  # one episode's closed-loop policy: flat state -> action


@dataclass(frozen=True)
class ExpertPolicy:
    """The env's scripted expert (``EnvSpec.expert``), closed loop, with noise; mixed with random motion.

    Each episode is uniform random motion with probability ``uniform_fraction``; otherwise the expert
    acts on the state at every step, its actions moved by Gaussian noise of std ``sigma`` half-widths
    of the action box and clipped to it.

    Attributes:
        uniform_fraction: probability that an episode is uniform, in [0, 1].
        sigma: the expert's action noise, in half-widths of the box (> 0).
    """

    uniform_fraction: float = 0.2
    sigma: float = 0.3
    name: str = "expert"

    def __post_init__(self):
        if not 0.0 <= self.uniform_fraction <= 1.0 or not self.sigma > 0:
            raise ValueError(f"uniform_fraction must be in [0, 1] and sigma > 0, got {self.uniform_fraction}, "
                             f"{self.sigma}")

    def start(self, rng: np.random.Generator, steps: int, low: np.ndarray, high: np.ndarray, spec) -> Controller:
        """The controller of one episode of the env ``spec`` (an ``envs.EnvSpec``)."""
        if spec.expert is None:
            raise ValueError(f"env {spec.name!r} has no scripted expert (EnvSpec.expert); use the uniform, "
                             f"correlated or mixed policy")
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        if rng.random() < self.uniform_fraction:
            actions = iter(UniformPolicy().sample(rng, steps, low, high))
            return lambda state: next(actions)
        expert, half = spec.expert(rng), (high - low) / 2

        def act(state: np.ndarray) -> np.ndarray:
            noisy = expert(state) + self.sigma * half * rng.standard_normal(len(low))
            return np.clip(noisy, low, high).astype(np.float32)
        return act

    def params(self) -> dict:
        return asdict(self)


POLICIES = {"uniform": UniformPolicy, "correlated": CorrelatedPolicy, "mixed": MixedPolicy, "expert": ExpertPolicy}


def make_policy(name: str, **params) -> BehaviourPolicy:
    """Build a behaviour policy by name (``uniform``, ``correlated``, ``mixed`` or ``expert``)."""
    if name not in POLICIES:
        raise ValueError(f"unknown behaviour policy {name!r}; expected one of {sorted(POLICIES)}")
    return POLICIES[name](**params)
