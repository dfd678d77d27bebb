"""The goal-image protocols, ``recorded`` and ``maze`` (docs/protocol.md).

``recorded``: a task takes a held-out episode and a start index ``t``; the simulator is reset to
the exact recorded state at ``t`` and the goal is the recorded image (and state) at
``t + goal_offset``. The agent sees only the current image and the goal image and
has ``budget`` env steps; it succeeds if at any step the env's success test holds.
Tasks are distinct (episode, start) pairs, drawn without replacement; starts that
already meet the test are skipped. Each task is run with its own seed (derived from the
evaluation's seed and the task's index), so a task's outcome does not depend on the
tasks run before it, and an interrupted evaluation resumed later gives the same results.

``maze``: tasks come from the environment (``EnvSpec.distance_tasks``): a start and a goal state
whose task distance (the maze's shortest path in cells) falls in a named bin, each bin with
its own budget. The goal image is rendered from the goal state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import gymnasium
import numpy as np
from tqdm.auto import tqdm

from envs.registry import EnvSpec
from worldmodel.data.episodes import Episodes


@dataclass(frozen=True)
class GoalTask:
    """One start/goal pair: from a recorded episode (``episode``, ``start``), or drawn by distance
    (``episode = start = -1``; ``group`` names its bin)."""

    episode: int
    start: int
    start_state: np.ndarray
    goal_state: np.ndarray
    goal_obs: np.ndarray  # (H, W, C) uint8
    group: str = ""  # the task's bin (``maze``: near, mid, far)
    budget: int | None = None  # its own budget of env steps (None: the evaluation's)
    info: dict = field(default_factory=dict)  # how it was drawn (cells, distance), for the journal
    seed: int | None = None  # the agent's seed for this task (None: from the evaluation's seed and its index)

    def __post_init__(self):
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"a task's budget is >= 1 env steps (or None: the evaluation's), got {self.budget}")

    @property
    def describe(self) -> dict:
        """JSON-able identity of the task (what the journal and the result list)."""
        out = {"episode": self.episode, "start": self.start} if self.episode >= 0 else {}
        return {**out, **({"group": self.group} if self.group else {}), **self.info}


class Agent(Protocol):
    """Acts from images only."""

    name: str

    def seed(self, seed: int) -> None:
        """Reseed every random draw of the agent (called before each task)."""
        ...

    def reset(self, goal_obs: np.ndarray) -> None:
        """Start a new task with this goal image ``(H, W, C) uint8``."""
        ...

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action for the current image ``(H, W, C) uint8``."""
        ...

    # Optional: ``set_budget(steps)``, called after ``reset`` with the task's budget of env steps.


@dataclass
class RandomAgent:
    """Uniform random actions (the protocol's random-action baseline)."""

    action_space: gymnasium.spaces.Box
    rng: np.random.Generator
    name: str = "random"

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, goal_obs: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.action_space.low, self.action_space.high).astype(np.float32)


@dataclass
class ZeroAgent:
    """Zero torque: the arm coasts (the protocol's zero-action baseline)."""

    action_space: gymnasium.spaces.Box
    name: str = "zero"

    def seed(self, seed: int) -> None:
        pass

    def reset(self, goal_obs: np.ndarray) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(self.action_space.shape, dtype=np.float32)


def sample_goal_tasks(
    episodes: Episodes, spec: EnvSpec, n: int, goal_offset: int, rng: np.random.Generator
) -> list[GoalTask]:
    """``n`` distinct tasks drawn uniformly without replacement over the (episode, start) pairs,
    skipping starts that already meet the goal; a request for more tasks than the split holds is
    refused."""
    if n < 1 or goal_offset < 1:
        raise ValueError(f"need n >= 1 tasks and goal_offset >= 1, got n={n}, goal_offset={goal_offset}")
    starts = np.maximum(np.asarray(episodes.lengths, dtype=np.int64) - goal_offset + 1, 0)  # per episode
    if starts.sum() == 0:
        raise ValueError(f"no episode is long enough for goal_offset={goal_offset} (longest: {episodes.lengths.max()})")
    first = np.concatenate([[0], np.cumsum(starts)[:-1]])
    tasks: list[GoalTask] = []
    for pair in rng.permutation(int(starts.sum())):
        e = int(np.searchsorted(first, pair, side="right") - 1)
        t = int(pair - first[e])
        f0 = int(episodes.frame_starts[e])
        start, goal = np.asarray(episodes.states[f0 + t]), np.asarray(episodes.states[f0 + t + goal_offset])
        if spec.success(start, goal):
            continue
        tasks.append(GoalTask(e, t, start, goal, np.asarray(episodes.obs[f0 + t + goal_offset])))
        if len(tasks) == n:
            return tasks
    raise ValueError(f"asked for {n} tasks, but the held-out split holds only {len(tasks)} distinct (episode, start) "
                     f"pairs whose start does not already meet the goal ({len(starts)} episodes, goal_offset "
                     f"{goal_offset}); collect more held-out episodes (heldout_episodes=...) or ask for fewer")


def sample_distance_tasks(env: gymnasium.Env, spec: EnvSpec, bins: dict[str, tuple[int, int]], per_bin: int,
                          budgets: dict[str, int], rng: np.random.Generator) -> list[GoalTask]:
    """The ``maze`` protocol's tasks: ``per_bin`` start/goal pairs per distance bin from the env
    (``spec.distance_tasks``), each with its bin's budget and the goal image rendered from the goal
    state."""
    if spec.distance_tasks is None:
        raise ValueError(f"env {spec.name!r} has no distance-binned tasks (EnvSpec.distance_tasks); "
                         f"use the recorded protocol")
    missing = set(bins) - set(budgets)
    if missing:
        raise ValueError(f"no budget for the bins {sorted(missing)}; budgets are given for {sorted(budgets)}")
    tasks = []
    env.reset(seed=0)
    for group, start, goal, info in spec.distance_tasks(env, bins, per_bin, rng):
        spec.set_state(env, goal)
        tasks.append(GoalTask(-1, -1, start, goal, env.unwrapped.render(), group, int(budgets[group]), info))
    return tasks


def task_seed(seed: int, index: int) -> int:
    """The seed of task ``index`` of an evaluation seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


@dataclass
class EpisodeResult:
    success: bool
    steps: int  # steps taken until success (or the budget)
    final_goal_error: float  # the env's goal error (``EnvSpec.goal_error``) at the end
    best_goal_error: float  # the smallest goal error reached within the budget
    act_seconds: list[float] = field(default_factory=list)
    plan_seconds: list[float] = field(default_factory=list)  # the agent's replans (planners only)
    plan_flops: list[float] = field(default_factory=list)  # model FLOPs of each replan (planners only)
    frames: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (image, goal error) when recorded
    subgoals: list[tuple[int, object]] = field(default_factory=list)  # (env step, latent) handed down, when recorded

    def to_json(self) -> dict:
        """Everything but the frames, JSON-able (what an interrupted evaluation keeps)."""
        return {"success": bool(self.success), "steps": int(self.steps), "final_goal_error": float(self.final_goal_error),
                "best_goal_error": float(self.best_goal_error), "act_seconds": list(map(float, self.act_seconds)),
                "plan_seconds": list(map(float, self.plan_seconds)), "plan_flops": list(map(float, self.plan_flops))}

    @classmethod
    def from_json(cls, d: dict) -> "EpisodeResult":
        return cls(d["success"], d["steps"], d["final_goal_error"], d["best_goal_error"], d["act_seconds"],
                   d["plan_seconds"], d.get("plan_flops", []))


def run_task(
    env: gymnasium.Env, spec: EnvSpec, task: GoalTask, agent: Agent, budget: int, record: bool = False
) -> EpisodeResult:
    """Reset ``env`` to the task's start state and let ``agent`` act for up to ``budget`` steps
    (the task's own budget where it has one).

    With ``record``, the result keeps every image with its goal error and, from an agent that hands
    subgoals down (``agent.subgoals``, one list per task), each subgoal with its env step (for videos).
    """
    budget = task.budget if task.budget is not None else budget
    if budget < 1:
        raise ValueError(f"an evaluation's budget is >= 1 env steps, got {budget}")
    env.reset(seed=0)
    spec.set_state(env, task.start_state)
    obs = env.unwrapped.render()
    agent_plans = getattr(agent, "plan_seconds", [])  # the agent appends its replanning times
    agent_flops = getattr(agent, "plan_flops", [])
    plans_before, flops_before = len(agent_plans), len(agent_flops)
    agent.reset(task.goal_obs)
    if hasattr(agent, "set_budget"):  # agents that plan by the steps left (HWM's hand-down rule)
        agent.set_budget(budget)
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
        success = spec.success(state, task.goal_state)
        if success:
            break
    return EpisodeResult(bool(success), step, err, best, times,
                         list(agent_plans[plans_before:]), list(agent_flops[flops_before:]), frames,
                         handed_down(agent, 0) if record else [])


def handed_down(agent: Agent, task: int) -> list:
    """The subgoals ``agent`` handed down to task ``task`` of its batch (none from an agent without subgoals)."""
    subgoals = getattr(agent, "subgoals", None)
    return list(subgoals[task]) if subgoals else []


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def run_tasks(envs: list[gymnasium.Env], spec: EnvSpec, tasks: list[GoalTask], agent: Agent, budget: int,
              record: set[int] = frozenset(),
              on_result: Callable[[int, EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Run ``tasks`` at once, task ``i`` in ``envs[i]``, with an agent that acts on a batch of images
    (``act((B, H, W, C)) -> (B, A)``) and can drop finished tasks (``select(keep)``): every step, one
    call for the tasks still running. Each task ends as :func:`run_task` ends it (the env's success
    test, or its budget); ``record`` holds the indices (into ``tasks``) whose frames are kept. A task's
    share of a batched step's time (and of a replan's time and FLOPs) is the step's divided by the
    tasks in it."""
    if len(envs) < len(tasks):
        raise ValueError(f"{len(tasks)} tasks need as many envs, got {len(envs)}")
    budgets = [t.budget if t.budget is not None else budget for t in tasks]
    if min(budgets) < 1:
        raise ValueError(f"an evaluation's budget is >= 1 env steps, got {min(budgets)}")
    obs = []
    for env, task in zip(envs, tasks):
        env.reset(seed=0)
        spec.set_state(env, task.start_state)
        obs.append(env.unwrapped.render())
    agent.reset(np.stack([t.goal_obs for t in tasks]))
    if hasattr(agent, "set_budget"):  # agents that plan by the steps left (HWM's hand-down rule)
        agent.set_budget(np.asarray(budgets))
    n = len(tasks)
    errors = [spec.goal_error(spec.get_state(env), t.goal_state) for env, t in zip(envs, tasks)]
    frames = [[(obs[i], errors[i])] if i in record else [] for i in range(n)]
    times, plans, flops = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]
    best, results, active = [math.inf] * n, [None] * n, list(range(n))
    agent_plans, agent_flops = getattr(agent, "plan_seconds", []), getattr(agent, "plan_flops", [])
    for step in range(1, max(budgets) + 1):
        plans_before, flops_before = len(agent_plans), len(agent_flops)
        t0 = time.perf_counter()
        actions = agent.act(np.stack([obs[i] for i in active]))
        share = (time.perf_counter() - t0) / len(active)
        new_plans = [p / len(active) for p in agent_plans[plans_before:]]
        new_flops = [f / len(active) for f in agent_flops[flops_before:]]
        for j, i in enumerate(active):
            times[i].append(share)
            plans[i] += new_plans
            flops[i] += new_flops
            obs[i], *_ = envs[i].step(actions[j])
            state = spec.get_state(envs[i])
            errors[i] = spec.goal_error(state, tasks[i].goal_state)
            best[i] = min(best[i], errors[i])
            if i in record:
                frames[i].append((obs[i], errors[i]))
            success = spec.success(state, tasks[i].goal_state)
            if success or step == budgets[i]:
                results[i] = EpisodeResult(bool(success), step, errors[i], best[i], times[i], plans[i], flops[i],
                                           frames[i], handed_down(agent, i) if i in record else [])
                if on_result is not None:
                    on_result(i, results[i])
        keep = [j for j, i in enumerate(active) if results[i] is None]
        if len(keep) < len(active):
            active = [active[j] for j in keep]
            if not active:
                break
            agent.select(keep)
    return results


def batches_agent(agent: Agent) -> bool:
    """Whether ``agent`` plays many tasks at once (acts on a batch, drops finished tasks, seeds per task)."""
    return callable(getattr(agent, "select", None))


def evaluate_agent(
    env: gymnasium.Env | list[gymnasium.Env],
    spec: EnvSpec,
    tasks: list[GoalTask],
    agent: Agent,
    budget: int,
    progress: bool = True,
    record: int | set[int] = 0,
    seed: int | None = None,
    done: dict[int, EpisodeResult] | None = None,
    on_result: Callable[[int, EpisodeResult], None] | None = None,
    only: set[int] | None = None,
) -> tuple[dict, list[EpisodeResult]]:
    """Run every task with ``agent``: a summary (success rate, Wilson 95 % interval, errors,
    timings) and the per-task results (the first ``record``, or the tasks whose indices ``record``
    holds, with their frames).

    Args:
        env: one env (tasks one after another), or several: an agent that batches (:func:`batches_agent`)
            then plays as many tasks at once (:func:`run_tasks`), the rest of the tasks in later batches;
            any other agent plays them one after another in the first.
        seed: reseed the agent before task ``i`` with ``task_seed(seed, i)`` (``None``: don't).
        done: results of tasks finished before (by index), not run again (resuming).
        on_result: called with ``(index, result)`` after each task that runs (e.g. to append it to a file).
        only: run only these tasks (e.g. this rank's share); the others' places in the list hold ``None``
            and the summary leaves them out.
    """
    only = set(range(len(tasks))) if only is None else set(only)
    done = {i: r for i, r in (done or {}).items() if i in only}
    recorded = set(range(record)) if isinstance(record, int) else set(record)
    envs = list(env) if isinstance(env, (list, tuple)) else [env]
    seeds = [t.seed if t.seed is not None else (task_seed(seed, i) if seed is not None else None)
             for i, t in enumerate(tasks)]
    results: dict[int, EpisodeResult] = {i: r for i, r in done.items() if i < len(tasks)}
    todo = [i for i in range(len(tasks)) if i not in results and i in only]
    size = len(envs) if batches_agent(agent) else 1
    with tqdm(total=len(only & set(range(len(tasks)))), initial=len(results), desc=agent.name, disable=not progress) as bar:
        for b in range(0, len(todo), size):
            chunk = todo[b : b + size]

            def finished(j, result, chunk=chunk):
                results[chunk[j]] = result
                bar.update()
                if on_result is not None:
                    on_result(chunk[j], result)

            if size == 1:
                i = chunk[0]
                if seeds[i] is not None:
                    agent.seed(seeds[i])
                finished(0, run_task(envs[0], spec, tasks[i], agent, budget, record=i in recorded))
                continue
            if any(seeds[i] is None for i in chunk):
                raise ValueError("a batch of tasks needs a seed per task (GoalTask.seed, or the evaluation's seed)")
            agent.seed([seeds[i] for i in chunk])
            run_tasks(envs, spec, [tasks[i] for i in chunk], agent, budget,
                      {j for j, i in enumerate(chunk) if i in recorded}, finished)
    ordered = [results.get(i) for i in range(len(tasks))]
    return summarize(agent.name, [r for r in ordered if r is not None]), ordered


def summarize_groups(name: str, tasks: list[GoalTask], results: list[EpisodeResult]) -> dict[str, dict]:
    """:func:`summarize` per task group (bin), in the order the groups first appear."""
    groups = list(dict.fromkeys(t.group for t in tasks))
    return {g: summarize(name, [r for t, r in zip(tasks, results) if t.group == g]) for g in groups}


def summarize(name: str, results: list[EpisodeResult]) -> dict:
    """Success rate with its Wilson 95 % interval, errors and timings of an agent's results."""
    k, n = sum(r.success for r in results), len(results)
    lo, hi = wilson_interval(k, n)
    act = [s for r in results for s in r.act_seconds]
    plans = [s for r in results for s in r.plan_seconds]
    summary = {
        "agent": name,
        "episodes": n,
        "successes": k,
        "success_rate": k / n,
        "wilson95": [lo, hi],
        "mean_steps_to_success": float(np.mean([r.steps for r in results if r.success])) if k else None,
        "max_steps_to_success": int(max(r.steps for r in results if r.success)) if k else None,
        "median_final_goal_error": float(np.median([r.final_goal_error for r in results])),
        "median_best_goal_error": float(np.median([r.best_goal_error for r in results])),
        "mean_act_ms": 1000 * float(np.mean(act)),
    }
    if plans:
        steps = sum(r.steps for r in results)
        summary["mean_plan_ms"], summary["replans"] = 1000 * float(np.mean(plans)), len(plans)
        summary["plan_ms_per_step"] = 1000 * float(np.sum(plans)) / steps
        flops = [f for r in results for f in r.plan_flops]
        if flops:
            summary["gflops_per_step"] = float(np.sum(flops)) / steps / 1e9
    return summary


BASELINES = ("random", "zero")
REFERENCE_AGENTS = BASELINES + ("oracle",)  # the oracle plans with the true simulator (privileged)


def make_baseline(name: str, action_space: gymnasium.spaces.Box, rng: np.random.Generator) -> Agent:
    """A reference policy by name: ``random`` or ``zero``."""
    if name == "random":
        return RandomAgent(action_space, rng)
    if name == "zero":
        return ZeroAgent(action_space)
    raise ValueError(f"unknown baseline {name!r}; expected one of {list(BASELINES)}")
