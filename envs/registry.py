"""Registry of the toolkit's pixel environments.

An environment is added by writing one module in ``envs/`` that calls
:func:`register_env` at import time, and one config file beside it, ``envs/<name>.yaml``:
its settings (``env:``), its dataset (``data:``) and each entry point's defaults for it
(a section per entry point: ``pretrain:``, ``plan:``, ...). Every module of the ``envs``
package is imported when the package is imported, and so is every module in the
directories ``HJEPA_ENV_PATH`` names (an env kept outside this package), so nothing
else needs editing (docs/envs.md shows the recipe).

Each registered environment is also a Gymnasium id, so ``gymnasium.make(gym_id)``
works after ``import envs``.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np

GoalErrorFn = Callable[[np.ndarray, np.ndarray], float]
QUANTITY_KINDS = ("angle", "position", "velocity", "fraction")


class UnknownEnvError(ValueError):
    """Raised for an environment name that nothing registered."""


@dataclass(frozen=True)
class Quantity:
    """A physical quantity an environment records each step (``info[key]``, stored in a
    dataset as ``physics.<key>``).

    Attributes:
        key: the ``info`` key.
        kind: ``angle`` (radians, compared modulo 2*pi; probes regress sin/cos), ``position``,
            ``velocity`` or ``fraction`` (a share in [0, 1], as Push-T's goal-zone coverage). One
            frame shows angles, positions and fractions, not velocities.
        unit: its unit, for tables and captions (``rad``, ``m``, ``rad/s``).
        dims: values per step.
        label: a human name (``joint angles``).
    """

    key: str
    kind: str
    unit: str
    dims: int
    label: str = ""

    def __post_init__(self):
        if self.kind not in QUANTITY_KINDS:
            raise ValueError(f"quantity {self.key!r}: kind must be one of {QUANTITY_KINDS}, got {self.kind!r}")
        if self.dims < 1:
            raise ValueError(f"quantity {self.key!r}: dims must be >= 1, got {self.dims}")

    @property
    def static(self) -> bool:
        """Readable from one frame (an angle or a position, not a velocity)."""
        return self.kind != "velocity"


def unwrapped_get_state(env: gymnasium.Env) -> np.ndarray:
    """The flat simulator state of ``env`` (its unwrapped ``get_state()``)."""
    return env.unwrapped.get_state()


def unwrapped_set_state(env: gymnasium.Env, state: np.ndarray) -> None:
    """Set ``env``'s flat simulator state (its unwrapped ``set_state(state)``)."""
    env.unwrapped.set_state(state)


@dataclass(frozen=True)
class EnvSpec:
    """What the toolkit knows about one pixel environment.

    Attributes:
        name: short name used in configs and on the command line (``env=reacher``).
        gym_id: the Gymnasium id it is registered under (``namespace/Name-vN``).
        entry_point: ``"module:Class"`` of the environment class.
        max_episode_steps: default episode length (Gymnasium ``TimeLimit``).
        state_dim: length of the flat simulator state from ``get_state``.
        quantities: the physical quantities ``info`` holds per step; the dataset stores
            them, and probes, captions and tables read their kinds and units.
        goal_error: ``goal_error(state, goal_state) -> float`` on flat simulator
            states: the distance the success test thresholds (for Reacher, the largest
            joint-angle error in radians, modulo 2*pi).
        success_threshold: success when ``goal_error <= success_threshold``.
        goal_error_label: what ``goal_error`` measures, for captions (``distance to goal``).
        goal_error_unit: its unit (``rad``).
        description: one line for listings.
        state_groups: named index groups of the flat state (``(name, indices)`` pairs),
            e.g. the parts of a scene that can be teleported separately in surprise tests.
        get_state: ``get_state(env) -> state``, the flat simulator state of a made env.
        set_state: ``set_state(env, state)``; setting a recorded state reproduces its image.
        distance_tasks: for environments with a distance-binned protocol (the maze):
            ``distance_tasks(env, bins, per_bin, rng)`` draws ``per_bin`` distinct start/goal pairs
            per bin ``{name: (lo, hi)}`` of a task distance, as ``(bin, start_state, goal_state,
            info)`` tuples; ``None`` where the env has none.
        subgoal: ``subgoal(env, state, goal_state) -> state``, a privileged waypoint on the way to
            the goal (the maze: the next cell of a shortest path) that the simulator-based oracle
            plans toward; ``None``: the goal itself.
        derived_quantities: ``derived_quantities(physics, env_kwargs) -> {name: (N, k) array}``,
            quantities computed from recorded ones (the maze: the shortest-path distance in cells
            to a fixed cell), which probes read as well; ``None``: none.
        simulate: ``simulate(env, state, actions) -> states``: the flat states ``(S, H, state_dim)``
            after each step of ``S`` action sequences ``(S, H, action_dim)`` played from ``state``,
            leaving ``env`` as it was (what the simulator oracle plans with); ``None``: the env is a
            MuJoCo one and ``mujoco.rollout`` simulates it.
    """

    name: str
    gym_id: str
    entry_point: str
    max_episode_steps: int
    state_dim: int
    quantities: tuple[Quantity, ...]
    goal_error: GoalErrorFn
    success_threshold: float
    goal_error_label: str = "goal error"
    goal_error_unit: str = ""
    description: str = ""
    state_groups: tuple[tuple[str, tuple[int, ...]], ...] = ()
    get_state: Callable[[gymnasium.Env], np.ndarray] = unwrapped_get_state
    set_state: Callable[[gymnasium.Env, np.ndarray], None] = unwrapped_set_state
    distance_tasks: Callable[..., list[tuple[str, np.ndarray, np.ndarray, dict]]] | None = None
    subgoal: Callable[[gymnasium.Env, np.ndarray, np.ndarray], np.ndarray] | None = None
    derived_quantities: Callable[[dict[str, np.ndarray], dict], dict[str, np.ndarray]] | None = None
    expert: Callable[[np.random.Generator], Callable[[np.ndarray], np.ndarray]] | None = None
    simulate: Callable[[gymnasium.Env, np.ndarray, np.ndarray], np.ndarray] | None = None
    config: type | None = None

    def __post_init__(self):
        keys = [q.key for q in self.quantities]
        if len(set(keys)) != len(keys):
            raise ValueError(f"env {self.name!r} declares a quantity twice: {keys}")

    @property
    def physics_keys(self) -> tuple[str, ...]:
        """The ``info`` keys of the quantities, in declaration order."""
        return tuple(q.key for q in self.quantities)

    def quantity(self, key: str) -> Quantity:
        """The declared quantity ``key``; a clear error for an unknown one."""
        for q in self.quantities:
            if q.key == key:
                return q
        raise KeyError(f"env {self.name!r} records no quantity {key!r}; it records {list(self.physics_keys)}")

    def success(self, state: np.ndarray, goal_state: np.ndarray) -> bool:
        """The protocol's success test between two flat simulator states."""
        return bool(self.goal_error(state, goal_state) <= self.success_threshold)

    def describe_error(self, error: float) -> str:
        """A goal error with its label and unit, for captions and prints (``distance to goal 0.031 m``)."""
        return f"{self.goal_error_label} {error:.3f} {self.goal_error_unit}".rstrip()

    @property
    def config_file(self) -> Path:
        """``<name>.yaml`` beside the module of its environment class: the env's settings and each entry
        point's defaults for it (it need not exist: then the defaults are ``config``'s)."""
        module = importlib.util.find_spec(self.entry_point.split(":")[0])
        if module is None or module.origin is None:
            raise UnknownEnvError(f"env {self.name!r}: the module of its entry point {self.entry_point!r} is not found")
        return Path(module.origin).with_name(f"{self.name}.yaml")

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


def checked_action(action, space: gymnasium.spaces.Box) -> np.ndarray:
    """``action`` as float64, or a clear error for a wrong shape or a non-finite value."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != space.shape:
        raise ValueError(f"action must have shape {space.shape}, got {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action contains non-finite values: {action}")
    return action


def checked_state(state, layout: str, size: int) -> np.ndarray:
    """A flat simulator state as float64, or a clear error naming ``layout`` (its entries)."""
    state = np.asarray(state, dtype=np.float64)
    if state.shape != (size,):
        raise ValueError(f"state must have shape ({size},) = {layout}, got {state.shape}")
    if not np.all(np.isfinite(state)):
        raise ValueError(f"state contains non-finite values: {state}")
    return state


def wrap_angle(x: np.ndarray) -> np.ndarray:
    """Map angles (radians) to ``[-pi, pi)``."""
    return (np.asarray(x) + math.pi) % (2 * math.pi) - math.pi
