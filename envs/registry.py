"""Registry of the toolkit's pixel environments.

An environment is added by writing one module in ``envs/`` that calls
:func:`register_env` at import time, and one config file
``experiments/configs/env/<name>.yaml`` that sets ``name: <name>``. Every module
of the ``envs`` package is imported when the package is imported, so nothing
else needs editing.

Each registered environment is also a Gymnasium id, so ``gymnasium.make(gym_id)``
works after ``import envs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium
import numpy as np

GoalErrorFn = Callable[[np.ndarray, np.ndarray], float]


class UnknownEnvError(ValueError):
    """Raised for an environment name that nothing registered."""


@dataclass(frozen=True)
class EnvSpec:
    """What the toolkit knows about one pixel environment.

    Attributes:
        name: short name used in configs and on the command line (``env=reacher``).
        gym_id: the Gymnasium id it is registered under (``namespace/Name-vN``).
        entry_point: ``"module:Class"`` of the environment class.
        max_episode_steps: default episode length (Gymnasium ``TimeLimit``).
        state_dim: length of the flat simulator state from ``get_state()``.
        physics_keys: keys of ``info`` that hold physical quantities per step; the
            dataset stores them and the probes read them.
        goal_error: ``goal_error(state, goal_state) -> float`` on flat simulator
            states: the distance the success test thresholds (for Reacher, the largest
            joint-angle error in radians, modulo 2*pi).
        success_threshold: success when ``goal_error <= success_threshold``.
        description: one line for listings.
        state_groups: named index groups of the flat state (``(name, indices)`` pairs),
            e.g. the parts of a scene that can be teleported separately in surprise tests.
    """

    name: str
    gym_id: str
    entry_point: str
    max_episode_steps: int
    state_dim: int
    physics_keys: tuple[str, ...]
    goal_error: GoalErrorFn
    success_threshold: float
    description: str = ""
    state_groups: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def success(self, state: np.ndarray, goal_state: np.ndarray) -> bool:
        """The protocol's success test between two flat simulator states."""
        return bool(self.goal_error(state, goal_state) <= self.success_threshold)

    @property
    def version(self) -> int:
        """The ``vN`` suffix of the Gymnasium id as an integer."""
        return int(self.gym_id.rsplit("-v", 1)[1])


_REGISTRY: dict[str, EnvSpec] = {}


def register_env(spec: EnvSpec) -> EnvSpec:
    """Add ``spec`` to the toolkit's registry and to Gymnasium's."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"environment name {spec.name!r} is already registered as {_REGISTRY[spec.name].gym_id}")
    _REGISTRY[spec.name] = spec
    if spec.gym_id not in gymnasium.registry:
        gymnasium.register(id=spec.gym_id, entry_point=spec.entry_point, max_episode_steps=spec.max_episode_steps)
    return spec


def env_names() -> list[str]:
    """Names of all registered environments, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> EnvSpec:
    """The :class:`EnvSpec` registered under ``name``; a clear error otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEnvError(f"unknown env {name!r}; expected one of {env_names()}") from None


def make_env(name: str, max_episode_steps: int | None = None, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make`` for a registered environment name.

    Args:
        name: registered short name, e.g. ``"reacher"``.
        max_episode_steps: episode length; the spec's default when ``None``.
        **kwargs: passed to the environment class (e.g. ``image_size=64``).
    """
    spec = get_spec(name)
    steps = spec.max_episode_steps if max_episode_steps is None else max_episode_steps
    if steps < 1:
        raise ValueError(f"max_episode_steps must be a positive integer, got {steps}")
    return gymnasium.make(spec.gym_id, max_episode_steps=steps, **kwargs)


def wrap_angle(x: np.ndarray) -> np.ndarray:
    """Map angles (radians) to ``[-pi, pi)``."""
    return (np.asarray(x) + math.pi) % (2 * math.pi) - math.pi
