"""The upper part of a hierarchy: a subgoal planner over a slow level (:class:`SubgoalPlanner`) and its
settings (:class:`SlowPlanConfig`); :mod:`planners.hierarchy` composes it with the agent below.

Every ``every`` env steps (one chunk by default), when the level below replans, the subgoal planner
encodes the newest frames, plans ``horizon`` macro-actions with CEM or MPPI in the slow model's plan
coordinates toward its goal: the cost is the distance of the level-1 latents the predicted slow states
stand for from the goal's, reduced over the chunks by ``min`` (so a detour that ends at the goal beats
stopping at a wall) plus ``progress`` times the mean (so of two such plans the quicker wins). The
predicted chunk boundary number ``subgoal`` of the best plan is the next goal of the level below, until
the next slow plan. When the slow plan comes closest to the goal no later than that chunk (or the agent
is there already), the goal itself is handed down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from planners.base import Bounds, Generators, shift_plan
from planners.cem import CEMConfig
from planners.frames import FrameHistory
from planners.mpc import LatentModel, goal_frames, make_planner
from planners.mppi import MPPIConfig
from planners.objectives import REDUCTIONS, GoalDistance


HAND_DOWN = ("level1", "slow", "either", "clip", "learned")  # who judges that the goal itself goes down (SlowPlanConfig.hand_down)
NEEDS_REACH = ("level1", "either")  # the rules that ask the level below, against a reach threshold


@dataclass
class SlowPlanConfig:
    """A slow level's planning.

    Attributes:
        horizon: slow steps (chunks) per plan.
        every: env steps between slow plans (0: one chunk).
        box: half-width of the box of plan coordinates searched, in standard deviations of the
            macro-actions the encoder produces on the training chunks.
        low_horizon: the level-below plan's horizon (0: its own setting).
        low_iterations: the level-below planner's iterations (CEM, iCEM, MPPI), as a fraction of its own
            setting (rounded, at least 1); fewer pay for the slow plans, so that the hierarchy costs
            no more per control step than flat planning.
        subgoal: which predicted chunk boundary of the slow plan is the level-below goal (1: the first,
            as HWM). The level below heads for a far subgoal at full speed and reaches a near one and
            waits, so a later one is faster as long as the path to it has no corner to cut.
        reduce: how the goal distance is reduced over the slow plan's chunks (``min``: the closest
            approach, which finds detours; ``mean`` would rather wait at a wall than go around it).
        progress: weight of the mean distance over the chunks added to that: with ``min`` alone any
            plan that comes close at some chunk is as good however it begins, and the first chunk
            is the subgoal.
        hand_down: when the level below gets the true goal rather than the subgoal. ``level1``: when the
            level below, planning toward the goal, predicts its best plan to come within ``reach`` of
            it (the level that will act judges); ``slow``: when the slow plan comes closest to the goal
            no later than the subgoal's chunk; ``either``: when one of the two says so; ``clip`` (HIQL's
            subgoal clipped at the goal): when the goal is no farther from the current frames than the
            subgoal is; ``learned``: when a learned temporal distance (``<model>/reach``, trained by
            ``experiments/train_reach.py``) puts the goal within ``reach_steps`` env steps.
        gain: with ``level1`` or ``either``, the goal also goes down when the level below's best plan
            toward it is predicted to cut its latent distance from the goal by this fraction (it is
            not stuck; 0: only within ``reach``).
        final_steps: HWM's rule, on top of ``hand_down``: in the last ``final_steps`` env steps of a
            task's budget the true goal goes down, whatever the slow plan says (0: never; needs the
            evaluation to tell the agent its budget).
        reach_steps: with ``learned``, the goal goes down when its predicted median distance is at most
            this many env steps (the data-collecting policy's steps, which are slower than a planner's).
        reach_quantile: ``reach`` is this quantile of the latent distance between images whose states
            are within the success tolerance of each other (see :mod:`worldmodel.evaluation.reach`).
        warm_iterations: iterations of a slow plan warm-started from the previous one, shifted (every
            slow plan of an episode after its first; 0: the slow planner's own).
        cem, mppi: the slow planner's settings (the same kind as the level below; below ``icem`` or
            ``gradient`` the slow level plans with CEM).
    """

    horizon: int = 5
    every: int = 0
    box: float = 2.0
    low_horizon: int = 0
    low_iterations: float = 1.0
    subgoal: int = 1
    reduce: str = "min"
    progress: float = 0.1
    hand_down: str = "slow"
    gain: float = 0.0
    final_steps: int = 0
    reach_steps: int = 25
    reach_quantile: float = 0.9
    warm_iterations: int = 0
    cem: CEMConfig = field(default_factory=lambda: CEMConfig(samples=300, elites=30, iterations=10))
    mppi: MPPIConfig = field(default_factory=MPPIConfig)

    def __post_init__(self):
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"slow.reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
        if not 1 <= self.subgoal <= self.horizon:
            raise ValueError(f"slow.subgoal must be a chunk of the slow plan, 1..{self.horizon}, got {self.subgoal}")
        counts = (self.every, self.low_horizon, self.progress, self.final_steps, self.warm_iterations)
        if min(counts) < 0 or self.horizon < 1 or self.box <= 0:
            raise ValueError(f"need slow horizon >= 1, box > 0 and every, low_horizon, progress, final_steps, "
                             f"warm_iterations >= 0, got {self}")
        if self.hand_down not in HAND_DOWN:
            raise ValueError(f"slow.hand_down must be one of {HAND_DOWN}, got {self.hand_down!r}")
        if not 0 <= self.gain < 1:
            raise ValueError(f"slow.gain is a fraction in [0, 1), got {self.gain}")
        if self.reach_steps < 1:
            raise ValueError(f"slow.reach_steps is a number of env steps >= 1, got {self.reach_steps}")
        if not 0 < self.reach_quantile <= 1:
            raise ValueError(f"slow.reach_quantile is a quantile in (0, 1], got {self.reach_quantile}")
        if not 0 < self.low_iterations <= 1:
            raise ValueError(f"slow.low_iterations is a fraction in (0, 1], got {self.low_iterations}")


class SlowLevel(Protocol):
    macro_dim: int
    chunk_steps: int  # env steps per slow step
    state_window: int  # level-1 block boundaries its encoder reads

    def encode(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor: ...  # (B, W, d), (B, W-1, bd) -> (B, d2)

    def macro_from_plan(self, u: torch.Tensor) -> torch.Tensor: ...  # plan coordinates -> macro-actions

    def rollout(self, s2: torch.Tensor, macros: torch.Tensor) -> torch.Tensor: ...  # (B, d2), (B, H, m) -> (B, H, d2)

    def subgoal(self, s2: torch.Tensor) -> torch.Tensor: ...  # (..., d2) -> (..., h, latent_dim)


class SubgoalPlanner:
    """Plans a slow level toward a goal and proposes the next goal of the level below, for ``B`` tasks at
    once: each task keeps its own clock of slow plans (:attr:`since`), its own warm start and, seeded
    with one generator per task, its own draws, so a batch plans as its tasks would one by one.

    Args:
        model: the level-1 world model (its frame latents are the goals' space).
        slow: the slow level.
        cfg: its planning settings.
        planner: the level below's planner kind (``cem``, ``mppi``; ``gradient`` gives CEM here).
        generator: the random draws (shared with the level below, so one seed fixes both).
    """

    def __init__(self, model: LatentModel, slow: SlowLevel, cfg: SlowPlanConfig, planner: str,
                 generator: torch.Generator):
        self.model, self.slow, self.cfg, self.gen = model, slow, cfg, generator
        self.draws: Generators = generator  # per task when the level below is seeded per task
        self.device, self.dtype = model.device, model.dtype
        self.every = cfg.every or slow.chunk_steps
        box = torch.full((slow.macro_dim,), float(cfg.box))
        self.bounds = Bounds(-box, box).to(self.device, self.dtype)
        kind = planner if planner in ("cem", "mppi") else "cem"
        self.planner = make_planner(kind, getattr(cfg, kind), cfg.horizon, self.bounds)
        self.history = FrameHistory(model.layout, keep=model.layout.boundary_span(slow.state_window))
        self.goal: torch.Tensor | None = None
        self.since = np.zeros(0, np.int64)  # per task: env steps since its last slow plan (-1: none since its goal)
        self.warm: torch.Tensor | None = None  # per task: its last slow plan, shifted (where ``warmed``)
        self.warmed = np.zeros(0, bool)

    def seed(self, seed: int) -> None:
        self.gen.manual_seed(seed)
        self.draws = self.gen

    def set_goal(self, goal: torch.Tensor) -> None:
        """The goal the slow plans aim at: level-1 frame latents ``(B, h, latent_dim)`` (or one latent
        ``(B, latent_dim)``, a still scene); a slow plan is due for every task."""
        self.goal = goal_frames(goal, self.model.layout.history)
        self.since = np.full(len(self.goal), -1, np.int64)

    def reset(self, goal: torch.Tensor) -> None:
        """New tasks toward ``goal``: no frames seen, no plan to warm-start from, a slow plan due."""
        self.set_goal(goal)
        self.history.clear()
        self.warm, self.warmed = None, np.zeros(len(self.goal), bool)

    def select(self, keep: list[int]) -> None:
        """Keep only the tasks ``keep`` (indices into the batch, in order): the others are finished."""
        idx = torch.as_tensor(keep, dtype=torch.long)
        self.history.select(keep)
        self.goal = self.goal[idx.to(self.goal.device)]
        self.since, self.warmed = self.since[keep], self.warmed[keep]
        if self.warm is not None:
            self.warm = self.warm[idx.to(self.warm.device)]
        if not isinstance(self.draws, torch.Generator):
            self.draws = [self.draws[i] for i in keep]

    def observe(self, obs: np.ndarray) -> None:
        """The newest observations ``(B, H, W, C)``."""
        self.history.add_frame(obs)

    def record(self, action: np.ndarray) -> None:
        """The actions ``(B, A)`` taken at the newest observations."""
        self.history.add_action(action)
        self.since[self.since >= 0] += 1

    @property
    def due(self) -> np.ndarray:
        """Per task ``(B,)``: whether a slow plan is due (none since its goal was set, or ``every`` env steps
        since the last)."""
        return (self.since < 0) | (self.since >= self.every)

    def groups(self, tasks: np.ndarray) -> list[np.ndarray]:
        """``tasks`` (indices into the batch) as the groups one slow plan serves: those whose plan starts
        afresh, then those warm-started from their previous one (a plan of its own iterations)."""
        warmed = self.warmed[tasks]
        return [g for g in (tasks[~warmed], tasks[warmed]) if len(g)]

    def iterations(self, tasks: np.ndarray) -> int | None:
        """The slow plan's iterations for a group of :meth:`groups` where not the planner's own:
        ``warm_iterations`` once warm."""
        return (self.cfg.warm_iterations or None) if self.warmed[tasks[0]] else None

    def flops_key(self, tasks: np.ndarray) -> str:
        """What a group's slow plan FLOPs depend on: its iterations and the frames it encodes."""
        return (f"subgoal/iterations {self.iterations(tasks) or 'all'}/frames "
                f"{self.history.unencoded(self.slow.state_window, tasks)}")

    @torch.no_grad()
    def propose(self, tasks: np.ndarray | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Plan the slow level from the newest frames of ``tasks`` (one group of :meth:`groups`; ``None``:
        every task, all warm or all not): the subgoal ``(n, h, latent_dim)`` (the predicted chunk boundary
        number ``subgoal``), and the slow level's verdicts ``(n,)`` on handing the goal down instead:
        ``slow``, the slow plan comes closest to the goal no later than that (or the agent is there already);
        ``clip``, the goal is no farther from the newest frames than the subgoal."""
        slow, L, cfg = self.slow, self.model.layout, self.cfg
        tasks = np.arange(len(self.goal)) if tasks is None else np.asarray(tasks)
        if len(np.unique(self.warmed[tasks])) > 1:
            raise ValueError("one slow plan serves tasks that are all warm-started or all not (see groups())")
        idx = torch.as_tensor(tasks, dtype=torch.long, device=self.device)
        z, a = self.history.latent_window(slow.state_window, self.model.latents, self.device, self.dtype, tasks)
        blocks = L.blocks(a).to(z.dtype)  # z (n, W, latent_dim), blocks (n, W - 1, block_dim)
        s2 = slow.encode(z, blocks)
        goal = self.goal[idx.to(self.goal.device)].flatten(1).to(s2)

        def reached(s2_0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return slow.subgoal(slow.rollout(s2_0, slow.macro_from_plan(u))).flatten(-2)

        cost = GoalDistance(reached, s2, goal, cfg.reduce, cfg.progress)
        draws = self.draws if isinstance(self.draws, torch.Generator) else [self.draws[i] for i in tasks]
        warm = self.warm[idx] if self.warmed[tasks[0]] else None
        result = self.planner.plan(cost, len(s2), draws, warm_start=warm, iterations=self.iterations(tasks))
        frames = slow.subgoal(slow.rollout(s2, slow.macro_from_plan(result.actions)))  # (n, H, h, d)
        here = L.newest_boundaries(z, blocks, L.history)[0]  # (n, h, latent_dim)
        now = ((here.flatten(1) - goal) ** 2).mean(-1)  # (n,)
        ahead = ((frames.flatten(-2) - goal[:, None]) ** 2).mean(-1)  # (n, H)
        closest = torch.cat([now[:, None], ahead], 1).argmin(1)  # 0: here, j: after chunk j
        shift = self.every // slow.chunk_steps
        shifted = (shift_plan(result.actions, min(shift, self.planner.horizon), self.bounds)
                   if shift else result.actions)
        if self.warm is None:
            self.warm = shifted.new_zeros((len(self.goal),) + shifted.shape[1:])
        self.warm[idx] = shifted
        self.warmed[tasks], self.since[tasks] = True, 0
        subgoal = frames[:, cfg.subgoal - 1]
        beyond = ((here.flatten(1) - subgoal.flatten(1)) ** 2).mean(-1) >= now
        return subgoal, {"slow": closest <= cfg.subgoal, "clip": beyond}
