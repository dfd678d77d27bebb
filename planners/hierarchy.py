"""Hierarchical latent planning: the slow level chooses subgoals, the level-1 MPC reaches them.

Every ``slow.every`` env steps (one chunk by default) the agent encodes its newest frames once,
plans ``slow.horizon`` macro-actions with the same kind of planner as level 1 (CEM or MPPI), in
the slow model's plan coordinates, toward the goal image: the cost is the distance of the level-1
latents the predicted slow states stand for from the goal's, reduced over the chunks by ``min``
(so a detour that ends at the goal beats stopping at a wall) plus ``progress`` times the mean (so
of two such plans the quicker wins). The predicted chunk boundary number ``slow.subgoal`` of the
best plan is the subgoal: its level-1 latents are the level-1 planner's goal until the next slow
replan. When the slow plan comes closest to the goal no later than that chunk (or the agent is
there already), the goal image itself is the level-1 goal. Between slow replans the level-1 MPC
replans at its own cadence, as the flat agent does.

Planners still know nothing about models: both levels are plain cost functions over boxes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import numpy as np
import torch

from planners.base import Bounds, shift_plan
from planners.cem import CEM
from planners.mpc import LatentMPCAgent, LatentModel, MPCConfig
from planners.mppi import MPPI
from planners.objectives import GoalDistance


class SlowLevel(Protocol):
    macro_dim: int
    chunk_steps: int  # env steps per slow step
    state_window: int  # level-1 block boundaries its encoder reads

    def encode(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor: ...  # (B, W, d), (B, W-1, bd) -> (B, d2)

    def macro_from_plan(self, u: torch.Tensor) -> torch.Tensor: ...  # plan coordinates -> macro-actions

    def rollout(self, s2: torch.Tensor, macros: torch.Tensor) -> torch.Tensor: ...  # (B, d2), (B, H, m) -> (B, H, d2)

    def subgoal(self, s2: torch.Tensor) -> torch.Tensor: ...  # (..., d2) -> (..., h, latent_dim)


class HierarchicalMPCAgent(LatentMPCAgent):
    """A :class:`LatentMPCAgent` whose goal between slow replans is the slow level's subgoal.

    Args:
        model: the level-1 world model.
        slow: its slow level.
        cfg: level-1 settings; ``cfg.slow`` the level-2 ones.
    """

    def __init__(self, model: LatentModel, slow: SlowLevel, cfg: MPCConfig, action_low: np.ndarray,
                 action_high: np.ndarray, generator: torch.Generator, name: str = "hierarchical-mpc"):
        sc = cfg.slow
        low = replace(cfg, horizon=sc.low_horizon or cfg.horizon)
        if sc.low_iterations < 1:
            fewer = lambda n: max(1, round(sc.low_iterations * n))  # noqa: E731
            low = replace(low, cem=replace(cfg.cem, iterations=fewer(cfg.cem.iterations)),
                          mppi=replace(cfg.mppi, iterations=fewer(cfg.mppi.iterations)))
        super().__init__(model, low, action_low, action_high, generator, name)
        self.slow, self.slow_cfg = slow, sc
        self.every = sc.every or slow.chunk_steps
        box = torch.full((slow.macro_dim,), float(sc.box))
        self.macro_bounds = Bounds(-box, box).to(self.device, self.dtype)
        kind = cfg.planner if cfg.planner in ("cem", "mppi") else "cem"
        self.slow_planner = (CEM if kind == "cem" else MPPI)(getattr(sc, kind), sc.horizon, self.macro_bounds)
        self.keep = max(self.span, model.layout.boundary_span(slow.state_window))
        self.subgoals: list[tuple[int, torch.Tensor]] = []  # (env step, newest level-1 goal latent) per slow replan

    def reset(self, goal_obs: np.ndarray) -> None:
        super().reset(goal_obs)
        h = self.model.layout.history
        self.goal_frames = self.goal[:, None].expand(-1, h, -1)  # (1, h, latent_dim): the goal, still
        self.target, self.slow_warm, self.since_slow, self.subgoals = self.goal_frames, None, None, []
        self.steps = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        action = super().act(obs)
        self.since_slow += 1
        self.steps += 1
        return action

    def _replan(self) -> float:
        if self.since_slow is None or self.since_slow >= self.every:
            self.since_slow = 0
            return self.counted("slow+plan", self._plan_both)
        return self.counted("plan", lambda: self._plan_toward(self.target))

    @torch.no_grad()
    def _plan_both(self) -> None:
        """Encode the newest frames once; plan the slow level, then level 1 toward the subgoal."""
        L, h = self.model.layout, self.model.layout.history
        x, a = self._window(max(self.slow.state_window, h))
        z, blocks = self.model.latents(x), L.blocks(a)  # (1, n, latent_dim), (1, n - 1, block_dim)
        self._plan_slow(z[:, -self.slow.state_window :], blocks[:, blocks.shape[1] + 1 - self.slow.state_window :])
        self._plan_toward(self.target, L.compose(z[:, -h:], blocks[:, blocks.shape[1] + 1 - h :]))

    def _plan_slow(self, z: torch.Tensor, blocks: torch.Tensor) -> None:
        """Plan macro-actions toward the goal from the level-1 latents ``z (1, W, d)`` of the newest
        boundaries and the blocks between them; set ``self.target``, the level-1 goal frames."""
        slow, L = self.slow, self.model.layout
        s2 = slow.encode(z, blocks)
        goal = self.goal_frames.flatten(1)

        def reached(s2_0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return slow.subgoal(slow.rollout(s2_0, slow.macro_from_plan(u))).flatten(-2)

        cost = GoalDistance(reached, s2, goal, self.slow_cfg.reduce, self.slow_cfg.progress)
        result = self.slow_planner.plan(cost, 1, self.gen, warm_start=self.slow_warm)
        frames = slow.subgoal(slow.rollout(s2, slow.macro_from_plan(result.actions)))  # (1, H, h, d)
        now = ((z[:, -L.history :].flatten(1) - goal) ** 2).mean(-1)  # (1,)
        ahead = ((frames.flatten(-2) - goal[:, None]) ** 2).mean(-1)  # (1, H)
        closest = int(torch.cat([now[:, None], ahead], 1).argmin(1))  # 0: here, j: after chunk j
        j = self.slow_cfg.subgoal
        self.target = self.goal_frames if closest <= j else frames[:, j - 1]
        self.subgoals.append((self.steps, self.target[0, -1].detach().float().cpu()))
        shift = self.every // slow.chunk_steps
        self.slow_warm = (shift_plan(result.actions, min(shift, self.slow_planner.horizon), self.macro_bounds)
                          if shift else result.actions)
