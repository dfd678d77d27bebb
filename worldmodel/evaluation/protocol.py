"""The goal-image protocol of ``shared/PROTOCOL.md``.

A task takes a held-out episode and a start index ``t``; the simulator is reset to
the exact recorded state at ``t`` and the goal is the recorded image (and state) at
``t + goal_offset``. The agent sees only the current image and the goal image and
has ``budget`` env steps; it succeeds if at any step the env's success test holds.
Tasks whose start already meets the test are skipped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import gymnasium
import numpy as np
from tqdm.auto import tqdm

from envs.registry import EnvSpec
from worldmodel.data.episodes import Episodes


@dataclass(frozen=True)
class GoalTask:
    """One start/goal pair from a recorded episode."""

    episode: int
    start: int
    start_state: np.ndarray
    goal_state: np.ndarray
    goal_obs: np.ndarray  # (H, W, C) uint8


class Agent(Protocol):
    """Acts from images only."""

    name: str

    def reset(self, goal_obs: np.ndarray) -> None:
        """Start a new task with this goal image ``(H, W, C) uint8``."""
        ...

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action for the current image ``(H, W, C) uint8``."""
        ...


@dataclass
class RandomAgent:
    """Uniform random actions (the protocol's random-action baseline)."""

    action_space: gymnasium.spaces.Box
    rng: np.random.Generator
    name: str = "random"

    def reset(self, goal_obs: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.action_space.low, self.action_space.high).astype(np.float32)


@dataclass
class ZeroAgent:
    """Zero torque: the arm coasts (the protocol's zero-action baseline)."""

    action_space: gymnasium.spaces.Box
    name: str = "zero"

    def reset(self, goal_obs: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(self.action_space.shape, dtype=np.float32)


def sample_goal_tasks(
    episodes: Episodes, spec: EnvSpec, n: int, goal_offset: int, rng: np.random.Generator
) -> list[GoalTask]:
    """``n`` tasks drawn uniformly over (episode, start), skipping starts that already succeed."""
    usable = np.flatnonzero(episodes.lengths >= goal_offset)
    if len(usable) == 0:
        raise ValueError(f"no episode is long enough for goal_offset={goal_offset} (longest: {episodes.lengths.max()})")
    tasks: list[GoalTask] = []
    for _ in range(100 * n):
        if len(tasks) == n:
            break
        e = int(rng.choice(usable))
        t = int(rng.integers(0, episodes.lengths[e] - goal_offset + 1))
        f0 = int(episodes.frame_starts[e])
        start, goal = np.asarray(episodes.states[f0 + t]), np.asarray(episodes.states[f0 + t + goal_offset])
        if spec.success(start, goal):
            continue
        tasks.append(GoalTask(e, t, start, goal, np.asarray(episodes.obs[f0 + t + goal_offset])))
    if len(tasks) < n:
        raise ValueError(f"found only {len(tasks)} of {n} tasks whose start does not already meet the goal")
    return tasks


@dataclass
class EpisodeResult:
    success: bool
    steps: int  # steps taken until success (or the budget)
    final_goal_error: float  # the env's goal error (``EnvSpec.goal_error``) at the end
    best_goal_error: float  # the smallest goal error reached within the budget
    act_seconds: list[float] = field(default_factory=list)
    frames: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (image, goal error) when recorded


def run_task(
    env: gymnasium.Env, spec: EnvSpec, task: GoalTask, agent: Agent, budget: int, record: bool = False
) -> EpisodeResult:
    """Reset ``env`` to the task's start state and let ``agent`` act for up to ``budget`` steps.

    With ``record``, the result keeps every image with its goal error (for videos).
    """
    env.reset(seed=0)
    spec.set_state(env, task.start_state)
    obs = env.unwrapped.render()
    agent.reset(task.goal_obs)
    if getattr(agent, "privileged", False):  # the simulator-based oracle also gets the goal state
        agent.set_goal_state(task.goal_state)
    times, best = [], math.inf
    frames = [(obs, spec.goal_error(spec.get_state(env), task.goal_state))] if record else []
    for step in range(1, budget + 1):
        t0 = time.perf_counter()
        action = agent.act(obs)
        times.append(time.perf_counter() - t0)
        obs, *_ = env.step(action)
        state = spec.get_state(env)
        err = spec.goal_error(state, task.goal_state)
        best = min(best, err)
        if record:
            frames.append((obs, err))
        if spec.success(state, task.goal_state):
            return EpisodeResult(True, step, err, best, times, frames)
    return EpisodeResult(False, budget, err, best, times, frames)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def evaluate_agent(
    env: gymnasium.Env,
    spec: EnvSpec,
    tasks: list[GoalTask],
    agent: Agent,
    budget: int,
    progress: bool = True,
    record: int = 0,
) -> tuple[dict, list[EpisodeResult]]:
    """Run every task with ``agent``: a summary (success rate, Wilson 95 % interval, errors,
    timings) and the per-task results (the first ``record`` with their frames)."""
    results = [
        run_task(env, spec, task, agent, budget, record=i < record)
        for i, task in enumerate(tqdm(tasks, desc=agent.name, disable=not progress))
    ]
    k, n = sum(r.success for r in results), len(results)
    lo, hi = wilson_interval(k, n)
    act = [s for r in results for s in r.act_seconds]
    summary = {
        "agent": agent.name,
        "episodes": n,
        "successes": k,
        "success_rate": k / n,
        "wilson95": [lo, hi],
        "mean_steps_to_success": float(np.mean([r.steps for r in results if r.success])) if k else None,
        "median_final_goal_error": float(np.median([r.final_goal_error for r in results])),
        "median_best_goal_error": float(np.median([r.best_goal_error for r in results])),
        "mean_act_ms": 1000 * float(np.mean(act)),
    }
    return summary, results


BASELINES = ("random", "zero")
REFERENCE_AGENTS = BASELINES + ("oracle",)  # the oracle plans with the true simulator (privileged)


def make_baseline(name: str, action_space: gymnasium.spaces.Box, rng: np.random.Generator) -> Agent:
    """A reference policy by name: ``random`` or ``zero``."""
    if name == "random":
        return RandomAgent(action_space, rng)
    if name == "zero":
        return ZeroAgent(action_space)
    raise ValueError(f"unknown baseline {name!r}; expected one of {list(BASELINES)}")
