"""Receding-horizon control in a latent space: plan, execute a few steps, replan.

The agent knows a model only through its verbs ``encode``, ``rollout``, ``newest`` and
``frame_latents`` and its state layout, and plans over blocks of ``action_block`` env
steps (their actions concatenated). The cost compares the newest frame latent of each
predicted state (and, with ``settle``, the one a block before it) with the goal image's.
Planning runs on the model's device and in its dtype.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from planners.base import Bounds, shift_plan
from planners.cem import CEM, CEMConfig
from planners.gradient import GradientConfig, GradientPlanner
from planners.mppi import MPPI, MPPIConfig
from planners.objectives import REDUCTIONS, ActionPenalty, GoalDistance, WeightedSum


class LayoutLike(Protocol):
    history: int  # frame latents per state, one action block apart
    action_block: int  # env steps per model step
    action_dim: int
    block_dim: int  # action_block * action_dim
    span: int  # env steps from a state's oldest frame to its newest

    def state_offsets(self) -> np.ndarray: ...  # offsets of a state's frames from its newest, oldest first

    def boundary_span(self, boundaries: int) -> int: ...  # env steps spanned by that many block boundaries

    def compose(self, latents: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor: ...  # frame latents, blocks -> s

    def blocks(self, actions: torch.Tensor) -> torch.Tensor: ...  # (..., n*k, A) -> (..., n, block_dim)


class LatentModel(Protocol):
    layout: LayoutLike
    device: torch.device
    dtype: torch.dtype
    image_shape: tuple[int, int, int]  # (C, H, W) of the images it encodes

    def encode(self, frames: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        ...  # (B, h, C, H, W) uint8 and the (B, (h-1)*k, A) actions between them -> (B, d)

    def latents(self, obs: torch.Tensor) -> torch.Tensor: ...  # (..., C, H, W) uint8 -> (..., latent_dim)

    def rollout(self, s0: torch.Tensor, actions: torch.Tensor, check_inputs: bool = True) -> torch.Tensor:
        ...  # -> (B, H, d); check_inputs=False skips the finiteness check (the planner's own candidates)

    def newest(self, s: torch.Tensor) -> torch.Tensor: ...  # (..., d) -> the newest frame's latent

    def frame_latents(self, s: torch.Tensor) -> torch.Tensor: ...  # (..., d) -> (..., history, latent_dim)


@dataclass
class SlowPlanConfig:
    """The slow level's planning (with ``MPCConfig.hierarchy``).

    Attributes:
        horizon: slow steps (chunks) per level-2 plan.
        every: env steps between level-2 replans (0: one chunk).
        box: half-width of the box of plan coordinates searched, in standard deviations of the
            macro-actions the encoder produces on the training chunks.
        low_horizon: the level-1 plan's horizon under a subgoal (0: ``MPCConfig.horizon``).
        low_iterations: the level-1 planner's iterations (CEM, MPPI) under a subgoal, as a fraction of
            its own setting (rounded, at least 1); fewer pay for the slow plans, so that the
            hierarchy costs no more per control step than flat planning.
        subgoal: which predicted chunk boundary of the slow plan is the level-1 goal (1: the first,
            as HWM). The level-1 planner heads for a far subgoal at full speed and reaches a near one
            and waits, so a later one is faster as long as the path to it has no corner to cut.
        reduce: how the goal distance is reduced over the slow plan's chunks (``min``: the closest
            approach, which finds detours; ``mean`` would rather wait at a wall than go around it).
        progress: weight of the mean distance over the chunks added to that: with ``min`` alone any
            plan that comes close at some chunk is as good however it begins, and the first chunk
            is the subgoal.
        cem, mppi: the level-2 planner's settings (the same kind as the level-1 planner;
            ``gradient`` plans level 2 with CEM).
    """

    horizon: int = 5
    every: int = 0
    box: float = 2.0
    low_horizon: int = 0
    low_iterations: float = 1.0
    subgoal: int = 1
    reduce: str = "min"
    progress: float = 0.1
    cem: CEMConfig = field(default_factory=lambda: CEMConfig(samples=300, elites=30, iterations=10))
    mppi: MPPIConfig = field(default_factory=MPPIConfig)

    def __post_init__(self):
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"slow.reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
        if not 1 <= self.subgoal <= self.horizon:
            raise ValueError(f"slow.subgoal must be a chunk of the slow plan, 1..{self.horizon}, got {self.subgoal}")
        if min(self.every, self.low_horizon, self.progress) < 0 or self.horizon < 1 or self.box <= 0:
            raise ValueError(f"need slow horizon >= 1, box > 0 and every, low_horizon, progress >= 0, got {self}")
        if not 0 < self.low_iterations <= 1:
            raise ValueError(f"slow.low_iterations is a fraction in (0, 1], got {self.low_iterations}")


@dataclass
class MPCConfig:
    """Receding-horizon planning.

    Attributes:
        planner: ``cem``, ``mppi`` or ``gradient``.
        horizon: model steps (action blocks) per plan.
        receding_horizon: env steps executed before replanning (any number up to the
            plan's length: a state can be encoded after any env step).
        goal_reduce: how the goal distance is reduced over the plan's steps: ``min``
            (the closest approach, since reaching the goal at any step succeeds),
            ``terminal`` or ``mean``. With ``terminal``, a receding plan keeps
            putting the goal at its far end and the arm rarely gets there.
        action_penalty: weight of ``mean(a^2)``.
        settle: weight of the distance from the goal of the frame latent one action
            block before each predicted one (0: only the newest counts). With it, a plan
            is cheapest where the arm reaches the goal and stays, not where it swings
            through.
        cem, mppi, gradient: the planners' settings.
        hierarchy: plan with the model's slow level too (:class:`planners.hierarchy.HierarchicalMPCAgent`):
            it chooses subgoals that this level-1 planner reaches.
        slow: the slow level's planning settings.
    """

    planner: str = "cem"
    horizon: int = 5
    receding_horizon: int = 5
    goal_reduce: str = "min"
    action_penalty: float = 0.0
    settle: float = 0.5
    cem: CEMConfig = field(default_factory=lambda: CEMConfig(samples=300, elites=30, iterations=10))
    mppi: MPPIConfig = field(default_factory=MPPIConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    hierarchy: bool = False
    slow: SlowPlanConfig = field(default_factory=lambda: SlowPlanConfig())

    def __post_init__(self):
        if self.planner not in ("cem", "mppi", "gradient"):
            raise ValueError(f"planner must be 'cem', 'mppi' or 'gradient', got {self.planner!r}")
        if self.goal_reduce not in REDUCTIONS:
            raise ValueError(f"goal_reduce must be one of {REDUCTIONS}, got {self.goal_reduce!r}")
        if self.settle < 0:
            raise ValueError(f"settle must be >= 0, got {self.settle}")
        if self.horizon < 1 or self.receding_horizon < 1:
            raise ValueError(f"horizon and receding_horizon must be >= 1, got {self.horizon}, {self.receding_horizon}")


def make_planner(cfg: MPCConfig, bounds: Bounds):
    cls, settings = {"cem": (CEM, cfg.cem), "mppi": (MPPI, cfg.mppi), "gradient": (GradientPlanner, cfg.gradient)}[
        cfg.planner
    ]
    return cls(settings, cfg.horizon, bounds)


def goal_cost(model: LatentModel, start: torch.Tensor, goal: torch.Tensor, cfg: MPCConfig) -> GoalDistance:
    """Distance of the predicted frame latents from the goal latent ``(B, latent_dim)``, reduced
    over the plan as ``cfg.goal_reduce`` says. With ``cfg.settle > 0`` each predicted state is
    scored by its newest latent plus ``settle`` times the latent one block before it, so a
    plan that reaches the goal and stays there beats one that swings through it.

    ``goal`` may also be frame latents ``(B, h, latent_dim)``, oldest first (a moving subgoal: the
    newest is the goal, the one before it what ``settle`` compares with); ``(B, latent_dim)`` is a
    still goal."""
    previous = goal[:, -2] if goal.ndim == 3 and goal.shape[1] > 1 else None
    goal = goal[:, -1] if goal.ndim == 3 else goal
    previous = goal if previous is None else previous
    if not cfg.settle:
        return GoalDistance(lambda s, a: model.newest(model.rollout(s, a, check_inputs=False)), start, goal,
                            cfg.goal_reduce)
    if model.layout.history < 2:
        raise ValueError(f"settle={cfg.settle} needs states of at least 2 frames, the model keeps "
                         f"{model.layout.history}; plan with settle=0")
    w = cfg.settle**0.5

    def last_two(s0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = model.frame_latents(model.rollout(s0, actions, check_inputs=False))[..., -2:, :]  # (N, H, 2, latent_dim)
        return torch.cat([w * z[..., 0, :], z[..., 1, :]], -1)

    return GoalDistance(last_two, start, torch.cat([w * previous, goal], -1), cfg.goal_reduce)


class LatentMPCAgent:
    """Acts from images: encodes the current and goal images, plans, executes, replans."""

    def __init__(self, model: LatentModel, cfg: MPCConfig, action_low: np.ndarray, action_high: np.ndarray,
                 generator: torch.Generator, name: str = "latent-mpc"):
        layout = model.layout
        k = layout.action_block
        if len(action_low) != layout.action_dim:
            raise ValueError(f"the env's actions have {len(action_low)} values, the model's {layout.action_dim}")
        if cfg.receding_horizon > cfg.horizon * k:
            raise ValueError(f"receding_horizon {cfg.receding_horizon} must be at most the plan's "
                             f"{cfg.horizon * k} env steps")
        self.model, self.cfg, self.gen, self.name = model, cfg, generator, name
        self.span = layout.span  # env steps a state looks back
        self.action_dim = layout.action_dim
        self.device, self.dtype = model.device, model.dtype
        self.env_bounds = Bounds(action_low, action_high).to(self.device, self.dtype)
        self.bounds = Bounds(np.tile(action_low, k), np.tile(action_high, k)).to(self.device, self.dtype)
        self.planner = make_planner(cfg, self.bounds)
        self.keep = self.span  # env steps of the past the agent keeps (its frames: one more)
        self.plan_seconds: list[float] = []
        self.plan_flops: list[float] = []  # model FLOPs of each replan
        self._flops: dict[str, float] = {}

    @torch.no_grad()
    def _window(self, boundaries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest ``boundaries`` block-boundary images ``(1, n, C, H, W)`` uint8, one block apart back
        from the newest frame, and the ``(1, (n - 1) * k, A)`` actions between them (before the
        episode's first image: that image, still)."""
        span = self.model.layout.boundary_span(boundaries)
        pad = max(0, span + 1 - len(self.frames))
        frames = [self.frames[0]] * pad + list(self.frames)
        actions = [np.zeros(self.action_dim, np.float32)] * pad + list(self.actions)
        newest = len(frames) - 1
        offsets = np.arange(boundaries) * self.model.layout.action_block - span  # oldest first, newest at 0
        x = torch.from_numpy(np.stack([frames[newest + i] for i in offsets])).permute(0, 3, 1, 2)[None]
        a = np.asarray(actions[len(actions) - span :] if span else [], np.float32).reshape(1, span, self.action_dim)
        return x.to(self.device), torch.from_numpy(a).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def _encode(self) -> torch.Tensor:
        """The model's state at the newest frame."""
        return self.model.encode(*self._window(self.model.layout.history))

    def seed(self, seed: int) -> None:
        """Reseed the planner's draws (the protocol does it before each task)."""
        self.gen.manual_seed(seed)

    def check_image(self, obs: np.ndarray, what: str) -> None:
        """``obs`` must be an ``(H, W, C)`` uint8 image of the model's size."""
        if not isinstance(obs, np.ndarray) or obs.dtype != np.uint8 or obs.ndim != 3:
            raise ValueError(f"the {what} must be an (H, W, C) uint8 numpy image, got "
                             f"{getattr(obs, 'dtype', type(obs).__name__)} {getattr(obs, 'shape', '')}")
        shape = getattr(self.model, "image_shape", None)  # (C, H, W)
        if shape is not None and obs.shape != (shape[1], shape[2], shape[0]):
            raise ValueError(f"the {what} must have shape {(shape[1], shape[2], shape[0])} for this model, "
                             f"got {obs.shape}")

    def reset(self, goal_obs: np.ndarray) -> None:
        self.check_image(goal_obs, "goal image")
        self.frames, self.actions = [goal_obs], []
        self.goal = self.model.newest(self._encode())  # the goal as a still scene
        self.warm, self.queue, self.frames, self.actions = None, [], [], []

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.check_image(obs, "observation")
        self.frames = (self.frames + [np.array(obs, copy=True)])[-self.keep - 1 :]
        if not self.queue:
            self.replan()
        action = self.queue.pop(0)
        self.actions = (self.actions + [action])[-self.keep :] if self.keep else []  # since the oldest frame kept
        return action

    def replan(self) -> None:
        """Plan from the frames seen so far; refill the action queue; record the time and model FLOPs."""
        start = time.perf_counter()
        flops = self._replan()
        self.plan_seconds.append(time.perf_counter() - start)
        self.plan_flops.append(flops)

    def counted(self, what: str, fn: Callable[[], None]) -> float:
        """Run ``fn``; its model FLOPs, counted on its first call (a plan's FLOPs do not depend on the
        images: fixed samples, iterations and horizon) and reused after."""
        if what in self._flops:
            fn()
        else:
            with FlopCounterMode(display=False) as counter:
                fn()
            self._flops[what] = float(counter.get_total_flops())
        return self._flops[what]

    def _replan(self) -> float:
        """Plan from the newest frame toward ``self.goal``; fill the action queue; the model FLOPs spent."""
        return self.counted("plan", lambda: self._plan_toward(self.goal))

    def _plan_toward(self, goal: torch.Tensor, s0: torch.Tensor | None = None) -> None:
        """Plan from the state ``s0`` (default: the newest frame's) toward ``goal``; fill the action queue."""
        cfg = self.cfg
        s0 = self._encode() if s0 is None else s0
        model = self.model
        cost = goal_cost(model, s0, goal, cfg)
        if cfg.action_penalty:
            cost = WeightedSum([(1.0, cost), (1.0, ActionPenalty(cfg.action_penalty))])
        grad = cfg.planner == "gradient"
        with torch.enable_grad() if grad else torch.no_grad():
            result = self.planner.plan(cost, 1, self.gen, warm_start=self.warm)
        env_actions = result.actions.detach().reshape(1, -1, self.action_dim)  # (1, H*k, A)
        self.queue = list(env_actions[0, : cfg.receding_horizon].float().cpu().numpy())
        # warm start: the rest of this plan, shifted by the env steps executed (states hold at any step)
        self.warm = shift_plan(env_actions, cfg.receding_horizon, self.env_bounds).reshape(1, self.planner.horizon, -1)
