"""Hierarchical latent planning as a composition: a subgoal planner over a slower model, and below it
any agent that plans toward the goal it is given.

:class:`HierarchicalAgent` ``(high, low)`` has the interface of the agent below it (``reset``,
``set_goal``, ``act``), so it stacks: level k proposes subgoals for level k - 1.

:class:`~planners.subgoals.SubgoalPlanner` is the ``high`` part (:mod:`planners.subgoals`: how it plans
the slow level and picks the subgoal; its settings, :class:`~planners.subgoals.SlowPlanConfig`).

Planners still know nothing about models: every level is a plain cost function over a box.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from planners.base import Generators
from planners.mpc import FlopCounter, LatentMPCAgent, LatentModel, MPCConfig, as_batch
from planners.subgoals import HAND_DOWN, NEEDS_REACH, SlowLevel, SlowPlanConfig, SubgoalPlanner


class HierarchicalAgent:
    """A subgoal planner ``high`` over an agent ``low`` that plans toward the goal it is given.

    ``low`` is any agent with :class:`planners.mpc.LatentMPCAgent`'s interface (``reset``, ``set_goal``,
    ``act`` = ``observe`` + ``next_action``, ``replan``, ``reach``, ``seed``, ``goal``, ``replans_next``,
    ``plan_seconds``, ``plan_flops``); this class has that interface too, so hierarchies stack. Where
    the level below is about to replan and a slow plan is due, the goal of the level below is decided
    by ``hand_down`` (:class:`SlowPlanConfig`): with ``level1``, the level below first plans toward the
    true goal; if its best plan is predicted to come within ``reach`` of it, that plan stands;
    otherwise the slow level proposes a subgoal and the level below plans toward that instead. With
    ``learned``, ``temporal`` (a :class:`~worldmodel.hierarchy.reach.TemporalDistance`) judges from
    the newest frame's latent and the goal's whether the goal is within ``reach_steps`` env steps.

    It plays ``B`` tasks at once as :class:`~planners.mpc.LatentMPCAgent` does: every decision is made
    per task (a task whose goal goes down makes no slow plan and keeps its plan toward the goal; the
    others plan their subgoals in one call), so with one seed per task (:meth:`seed`) a batch plays as
    its tasks would one by one; :meth:`select` drops finished tasks. A stacked level plays one task at
    a time.

    Attributes:
        subgoals: per task of the batch (in the order :meth:`reset` got them), ``(env step, newest frame
            latent (latent_dim,))`` of each goal handed down.
        plan_seconds, plan_flops: per replan of the level below, its time and model FLOPs with those
            of the slow plan and the goal plan made for it.
        slow_seconds, slow_flops: of each of those, the part spent above the level below (the slow
            plan and the learned reach estimate).
    """

    def __init__(self, high: SubgoalPlanner, low, name: str = "hierarchical-mpc", hand_down: str = "slow",
                 reach: float | None = None, gain: float = 0.0, final_steps: int = 0, temporal=None,
                 reach_steps: int = 25):
        if hand_down not in HAND_DOWN:
            raise ValueError(f"hand_down must be one of {HAND_DOWN}, got {hand_down!r}")
        if hand_down == "learned" and temporal is None:
            raise ValueError("hand_down='learned' needs a learned temporal distance (experiments/train_reach.py)")
        if hand_down in NEEDS_REACH and (reach is None or not reach > 0):
            raise ValueError(f"hand_down={hand_down!r} needs a reach threshold > 0 (a latent distance), got {reach}")
        self.high, self.low, self.name, self.hand_down, self.reach_threshold = high, low, name, hand_down, reach
        self.gain, self.final_steps, self.temporal, self.reach_steps = gain, final_steps, temporal, reach_steps
        self.budget: np.ndarray | None = None  # per task
        self.flops = FlopCounter()
        self.plan_seconds: list[float] = []
        self.plan_flops: list[float] = []
        self.slow_seconds: list[float] = []
        self.slow_flops: list[float] = []
        self.subgoals: list[list[tuple[int, torch.Tensor]]] = []
        self.slots: list[int] = []  # of each task still in the batch, its place in ``subgoals``
        self.steps = 0

    @property
    def goal(self) -> torch.Tensor | None:
        return self.high.goal

    @property
    def reach(self) -> torch.Tensor | None:
        return self.low.reach

    @property
    def distance(self) -> torch.Tensor | None:
        return self.low.distance

    @property
    def replans_next(self) -> bool:
        return self.low.replans_next

    @property
    def draws(self) -> Generators:
        return self.low.draws

    def seed(self, seed: int | list[int]) -> None:
        """Reseed both levels' draws (one generator serves both): one seed, or one per task of the next batch."""
        self.low.seed(seed)
        self.high.draws = self.low.draws

    def reset(self, goal_obs: np.ndarray) -> None:
        """Start tasks toward goal images ``(H, W, C)`` or ``(B, H, W, C)``."""
        self.low.reset(goal_obs)
        self.high.reset(self.low.goal)
        self.steps, self.budget = 0, None
        self.subgoals, self.slots = [[] for _ in range(len(self.high.goal))], list(range(len(self.high.goal)))

    def select(self, keep) -> None:
        """Keep only the tasks ``keep`` (indices into the batch, in order): the others are finished."""
        keep = [int(i) for i in keep]
        self.low.select(keep)
        self.high.select(keep)
        self.slots = [self.slots[i] for i in keep]
        if self.budget is not None:
            self.budget = self.budget[keep]

    def set_budget(self, steps) -> None:
        """The env steps each task allows (after ``reset``; one number for all, or one per task): the last
        ``final_steps`` go to the goal."""
        budget = np.broadcast_to(np.asarray(steps, np.int64), (len(self.high.goal),)).copy()
        if budget.min() < 1:
            raise ValueError(f"a task's budget is >= 1 env steps, got {budget.min()}")
        self.budget = budget
        if hasattr(self.low, "set_budget"):  # a stacked level below keeps its own final steps
            self.low.set_budget(budget)

    @property
    def final(self) -> np.ndarray:
        """Per task ``(B,)``: whether it is in its last ``final_steps`` steps (HWM's rule: plan flat on the goal)."""
        if not self.final_steps or self.budget is None:
            return np.zeros(len(self.high.goal), bool)
        return self.steps >= self.budget - self.final_steps

    @property
    def due(self) -> np.ndarray:
        """Per task ``(B,)``: whether the goal of the level below is to be decided anew (a slow plan is due,
        or the task is in its final steps)."""
        return self.high.due | self.final

    def set_goal(self, goal: torch.Tensor) -> None:
        """A new goal for the slow plans (a subgoal from a level above); a slow plan toward it is due."""
        self.high.set_goal(goal)

    def act(self, obs: np.ndarray) -> np.ndarray:
        batch, single = as_batch(obs, "observation")
        self.observe(batch)
        action = self.next_action()
        return action[0] if single else action

    def observe(self, obs: np.ndarray) -> None:
        self.high.observe(obs)
        self.low.observe(obs)

    def next_action(self) -> np.ndarray:
        replans = len(self.low.plan_seconds)
        seconds = flops = 0.0
        if self.low.replans_next and self.due.any():
            seconds, flops, _ = self._decide()
        action = self.low.next_action()
        if len(self.low.plan_seconds) > replans:
            self._count(replans, seconds, flops)
        self.high.record(action)
        self.steps += 1
        return action

    def replan(self, only=None) -> None:
        """Plan now (as the level above asks, to judge what this level reaches): decide the goal of the
        level below where a slow plan is due, and let it plan."""
        if only is not None and len(only) < len(self.high.goal):
            raise ValueError("a stacked level replans all its tasks at once: play one task at a time "
                             "(batch_tasks=1)")
        replans = len(self.low.plan_seconds)
        seconds, flops, planned = self._decide() if self.due.any() else (0.0, 0.0, False)
        if not planned:
            self.low.replan()
        self._count(replans, seconds, flops)

    def _count(self, replans: int, seconds: float, flops: float) -> None:
        """One replan of this level: the slow plan's time and FLOPs with those of the level below's plans
        made since it had made ``replans``."""
        self.plan_seconds.append(seconds + sum(self.low.plan_seconds[replans:]))
        self.plan_flops.append(flops + sum(self.low.plan_flops[replans:]))
        self.slow_seconds.append(seconds)
        self.slow_flops.append(flops)

    def _decide(self) -> tuple[float, float, bool]:
        """Hand the goal or a subgoal down to each task that is due; the time and model FLOPs of the slow
        plans (the level below's plans count on its own), and whether the level below has planned for
        every task (toward the goal, under ``level1`` and ``either``).

        A task in its final steps gets the goal, with no slow plan (HWM's rule). Of the others that are
        due, those whose goal is judged within reach (``learned``: by the temporal distance; ``level1``,
        ``either``: by the level below's plan toward it) get the goal; the rest get the subgoal of a slow
        plan, or the goal where the slow level says so (``slow``, ``clip``, ``either``)."""
        goal = self.high.goal
        n = len(goal)
        final = self.final
        decide = self.high.due & ~final
        target = goal if self.low.goal is None else self._where(final, goal, self.low.goal)
        moved = final & self._differs(target)  # final tasks whose goal goes down now
        reachable, seconds, flops, planned = np.zeros(n, bool), 0.0, 0.0, False
        if self.hand_down == "learned" and decide.any():  # a learned temporal distance from the newest frame
            start = time.perf_counter()
            out: list = []
            key = f"reach/frames {self.low.history.unencoded(self.low.model.layout.history)}"
            flops = self.flops.run(key, lambda: out.append(self._learned_reach(goal)), tasks=n)
            seconds, reachable = time.perf_counter() - start, decide & out[0].cpu().numpy()
        if self.hand_down in NEEDS_REACH and decide.any():  # the level that will act plans toward the goal first
            self.low.set_goal(self._where(decide, goal, target))
            self.low.replan()
            planned, reach = True, self.low.reach  # (B,)
            hit = reach <= self.reach_threshold
            if self.gain:
                hit |= reach <= (1 - self.gain) * self.low.distance
            reachable = decide & hit.cpu().numpy()
        target = self._where(reachable, goal, target)
        ask = np.flatnonzero(decide & ~reachable)
        for group in self.high.groups(ask):
            start = time.perf_counter()
            out = []
            flops += self.flops.run(self.high.flops_key(group), lambda g=group: out.append(self.high.propose(g)),
                                    tasks=len(group))
            seconds += time.perf_counter() - start
            subgoal, verdicts = out[0]
            idx = torch.as_tensor(group, device=target.device)
            chosen = subgoal.to(target)
            rule = "slow" if self.hand_down == "either" else self.hand_down
            if rule in verdicts:  # the slow level may hand the goal itself down (level1, learned: out of reach)
                chosen = self._where(verdicts[rule], goal[idx], chosen)
            target = target.index_copy(0, idx, chosen)
        self.low.set_goal(target)
        if planned and len(ask):  # replace the plans made toward the goal
            self.low.replan(only=ask if len(ask) < n else None)
        for j in np.flatnonzero(decide | moved):
            self.subgoals[self.slots[j]].append((self.steps, target[j, -1].detach().float().cpu()))
        return seconds, flops, planned

    def _differs(self, target: torch.Tensor) -> np.ndarray:
        """Per task: whether ``target`` differs from the level below's goal now."""
        if self.low.goal is None:
            return np.ones(len(target), bool)
        current = self.low.goal.to(target)
        return (target != current).flatten(1).any(1).cpu().numpy()

    @staticmethod
    def _where(mask: np.ndarray, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per task: ``a`` where ``mask``, else ``b``."""
        return torch.where(torch.as_tensor(mask, device=a.device)[:, None, None], a, b.to(a))

    @torch.no_grad()
    def _learned_reach(self, goal: torch.Tensor) -> torch.Tensor:
        """Whether the learned temporal distance puts ``goal`` within ``reach_steps`` of the newest frame, ``(B,)``."""
        low = self.low
        here = low.model.newest(low.encode())  # (B, latent_dim)
        return self.temporal.within(here.to(self.temporal.mean), goal[:, -1].to(self.temporal.mean),
                                    self.reach_steps).to(here.device)


def hierarchical_agent(model: LatentModel, slow: SlowLevel, mpc: MPCConfig, cfg: SlowPlanConfig,
                       action_low: np.ndarray, action_high: np.ndarray, generator: torch.Generator,
                       name: str = "hierarchical-mpc", reach: float | None = None, temporal=None,
                       policy=None) -> HierarchicalAgent:
    """Two levels: a :class:`SubgoalPlanner` over ``slow`` above a flat :class:`LatentMPCAgent` with the
    settings ``mpc``, its horizon and iterations as ``cfg.low_horizon`` and ``cfg.low_iterations`` say (and the
    amortized ``policy`` where ``mpc.proposal`` asks for it)."""
    low = replace(mpc, horizon=cfg.low_horizon or mpc.horizon)
    if cfg.low_iterations < 1:
        fewer = lambda n: max(1, round(cfg.low_iterations * n))  # noqa: E731
        low = replace(low, cem=replace(mpc.cem, iterations=fewer(mpc.cem.iterations)),
                      icem=replace(mpc.icem, iterations=fewer(mpc.icem.iterations)),
                      mppi=replace(mpc.mppi, iterations=fewer(mpc.mppi.iterations)))
    return HierarchicalAgent(SubgoalPlanner(model, slow, cfg, mpc.planner, generator),
                             LatentMPCAgent(model, low, action_low, action_high, generator, name=f"{name}/level-1",
                                            policy=policy),
                             name, cfg.hand_down, reach, cfg.gain, cfg.final_steps, temporal, cfg.reach_steps)
