"""An upper bound: the same CEM, planning with the true simulator instead of a learned model.

Privileged by design: it reads the simulator's state and the goal state, never the
images. It validates the environment, the protocol and the planner independently of
learning. Candidate action sequences are simulated with the env's own ``spec.simulate``
(Push-T: pymunk on a scratch copy) or, for a MuJoCo env, in parallel with
``mujoco.rollout`` from the current full physics state.
"""

from __future__ import annotations

import time

import mujoco
import mujoco.rollout
import numpy as np
import torch

from envs.registry import EnvSpec
from planners.base import Bounds, shift_plan
from planners.cem import CEM, CEMConfig


class OracleAgent:
    """CEM on the true dynamics; cost = the smallest goal error reached along the plan.

    Where the env declares a privileged waypoint (``spec.subgoal``: in the maze, the next cell of
    a shortest path), each replan aims at the waypoint from the current state instead of the goal.
    """

    privileged = True

    def __init__(self, env, spec: EnvSpec, cfg: CEMConfig, horizon: int, receding_horizon: int,
                 generator: torch.Generator, name: str = "oracle-cem"):
        if not 1 <= receding_horizon <= horizon:
            raise ValueError(f"need 1 <= receding_horizon <= horizon, got {receding_horizon}, {horizon}")
        self.env, self.spec, self.name = env.unwrapped, spec, name
        self.horizon, self.receding, self.gen = horizon, receding_horizon, generator
        space = env.action_space
        self.bounds = Bounds(space.low, space.high)
        self.cem = CEM(cfg, horizon, self.bounds)
        if spec.simulate is None:  # a MuJoCo env
            self.frame_skip = self.env.frame_skip
            self.data = mujoco.MjData(self.env.model)
        self.plan_seconds: list[float] = []

    def seed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    def set_goal_state(self, goal_state: np.ndarray) -> None:
        self.final_goal = self.goal = np.asarray(goal_state)

    def reset(self, goal_obs: np.ndarray) -> None:
        self.warm, self.queue = None, []

    def act(self, obs: np.ndarray) -> np.ndarray:
        if not self.queue:
            start = time.perf_counter()
            if self.spec.subgoal is not None:
                self.goal = self.spec.subgoal(self.env, self.spec.get_state(self.env), self.final_goal)
            result = self.cem.plan(self._cost, 1, self.gen, warm_start=self.warm)
            self.queue = list(result.actions[0, : self.receding].numpy())
            self.warm = shift_plan(result.actions, self.receding, self.bounds)
            self.plan_seconds.append(time.perf_counter() - start)
        return self.queue.pop(0)

    def _cost(self, actions: torch.Tensor) -> torch.Tensor:
        """The smallest goal error along each of the ``(1, S, H, A)`` candidate plans, ``(1, S)``."""
        S = actions.shape[1]
        if self.spec.simulate is not None:
            flat = self.spec.simulate(self.env, self.spec.get_state(self.env), actions[0].double().numpy())
        else:
            flat = self._mujoco_states(actions[0].double().numpy())
        errors = np.array([[self.spec.goal_error(s, self.goal) for s in traj] for traj in flat])  # (S, H)
        return torch.from_numpy(errors.min(1)).float().view(1, S)

    def _mujoco_states(self, actions: np.ndarray) -> np.ndarray:
        """The flat ``[qpos, qvel]`` after each env step of plans ``(S, H, A)``, ``(S, H, nq + nv)``."""
        model = self.env.model
        full = mujoco.mjtState.mjSTATE_FULLPHYSICS
        state0 = np.empty(mujoco.mj_stateSize(model, full))
        mujoco.mj_getState(model, self.env.data, state0, full)
        control = np.repeat(actions, self.frame_skip, axis=1)  # (S, H * skip, A)
        states, _ = mujoco.rollout.rollout(model, self.data, state0[None], control)
        nq, nv = model.nq, model.nv
        at_steps = states[:, self.frame_skip - 1 :: self.frame_skip]  # after each env step
        return np.concatenate([at_steps[..., 1 : 1 + nq], at_steps[..., 1 + nq : 1 + nq + nv]], -1)
