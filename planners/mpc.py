"""Receding-horizon control in a latent space: plan, execute a few steps, replan.

The agent knows a model only through its verbs ``encode``, ``rollout``, ``newest`` and
``frame_latents`` and its state layout, and plans over blocks of ``action_block`` env
steps (their actions concatenated). The cost compares the newest frame latent of each
predicted state (and, with ``settle``, the one a block before it) with the goal image's.
Planning runs on the model's device and in its dtype.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from planners.base import Bounds, shift_plan
from planners.frames import FrameHistory
from planners.cem import CEM, CEMConfig
from planners.gradient import GradientConfig, GradientPlanner
from planners.icem import ICEM, ICEMConfig
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
class MPCConfig:
    """Receding-horizon planning.

    Attributes:
        planner: ``cem``, ``icem``, ``mppi`` or ``gradient``; or ``policy``: no search, the plan the
            amortized goal-conditioned policy rolls out through the model (``horizon 1``: one forward
            pass of each per replan).
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
        warm_iterations: iterations (Adam steps for ``gradient``) of a plan warm-started from the
            previous one, shifted (every plan of an episode after its first; 0: the planner's own).
        proposal: ``none``, or ``policy``: the amortized policy's plan, rolled out through the model, is
            a candidate of every iteration beside the mean (the previous plan, shifted) and the first
            plan's mean (in place of the box's centre); ``warm_iterations`` then apply to every plan.
        cem, icem, mppi, gradient: the planners' settings.
    """

    planner: str = "cem"
    horizon: int = 5
    receding_horizon: int = 5
    goal_reduce: str = "min"
    action_penalty: float = 0.0
    settle: float = 0.5
    warm_iterations: int = 0
    proposal: str = "none"
    # 300 x 10: 100 x 3 plans 5-6 times faster at the same success on Reacher's 25-step goals but
    # loses goals 75 steps ahead (docs/results.md#planning-speed)
    cem: CEMConfig = field(default_factory=lambda: CEMConfig(samples=300, elites=30, iterations=10))
    icem: ICEMConfig = field(default_factory=ICEMConfig)
    mppi: MPPIConfig = field(default_factory=MPPIConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)

    def __post_init__(self):
        if self.planner not in PLANNERS and self.planner != POLICY:
            raise ValueError(f"planner must be one of {sorted(PLANNERS) + [POLICY]}, got {self.planner!r}")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        if self.proposal == POLICY and self.planner == POLICY:
            raise ValueError("proposal=policy seeds a search planner (cem, icem, mppi, gradient); planner=policy "
                             "plans with the policy alone")
        if self.warm_iterations < 0:
            raise ValueError(f"warm_iterations must be >= 0 (0: the planner's own), got {self.warm_iterations}")
        if self.goal_reduce not in REDUCTIONS:
            raise ValueError(f"goal_reduce must be one of {REDUCTIONS}, got {self.goal_reduce!r}")
        if self.settle < 0:
            raise ValueError(f"settle must be >= 0, got {self.settle}")
        if self.horizon < 1 or self.receding_horizon < 1:
            raise ValueError(f"horizon and receding_horizon must be >= 1, got {self.horizon}, {self.receding_horizon}")


PLANNERS = {"cem": CEM, "icem": ICEM, "mppi": MPPI, "gradient": GradientPlanner}
POLICY = "policy"  # the amortized policy: a planner of its own, or the search planners' proposal
PROPOSALS = ("none", POLICY)


def uses_policy(cfg: MPCConfig) -> bool:
    """Whether an agent with these settings needs the amortized policy."""
    return cfg.planner == POLICY or cfg.proposal == POLICY


def make_planner(name: str, settings, horizon: int, bounds: Bounds):
    """The planner ``name`` (a key of ``PLANNERS``) with its ``settings`` over plans of ``horizon`` steps in
    ``bounds``."""
    if name not in PLANNERS:
        raise ValueError(f"planner must be one of {sorted(PLANNERS)}, got {name!r}")
    return PLANNERS[name](settings, horizon, bounds)


def goal_frames(goal: torch.Tensor, history: int) -> torch.Tensor:
    """A goal as frame latents ``(B, h, latent_dim)``, oldest first: ``goal`` itself, or, for one latent
    ``(B, latent_dim)``, a still scene (that latent at every block boundary)."""
    if goal.ndim == 2:
        goal = goal[:, None].expand(-1, history, -1)
    if goal.ndim != 3 or goal.shape[1] != history:
        raise ValueError(f"a goal must be (B, latent_dim) or (B, {history}, latent_dim), got {tuple(goal.shape)}")
    return goal


def goal_cost(model: LatentModel, start: torch.Tensor, goal: torch.Tensor, cfg: MPCConfig) -> GoalDistance:
    """Distance of the predicted frame latents from the goal's (:func:`goal_frames`), reduced over the
    plan as ``cfg.goal_reduce`` says. The newest predicted latent is compared with the newest goal
    latent; with ``cfg.settle > 0`` the latent one block before it is compared, with weight ``settle``,
    with the goal latent before the newest, so a plan that reaches a still goal and stays there beats
    one that swings through it."""
    goal = goal_frames(goal, model.layout.history)
    if not cfg.settle:
        return GoalDistance(lambda s, a: model.newest(model.rollout(s, a, check_inputs=False)), start, goal[:, -1],
                            cfg.goal_reduce)
    if model.layout.history < 2:
        raise ValueError(f"settle={cfg.settle} needs states of at least 2 frames, the model keeps "
                         f"{model.layout.history}; plan with settle=0")
    w = cfg.settle**0.5

    def last_two(s0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = model.frame_latents(model.rollout(s0, actions, check_inputs=False))[..., -2:, :]  # (N, H, 2, latent_dim)
        return torch.cat([w * z[..., 0, :], z[..., 1, :]], -1)

    return GoalDistance(last_two, start, torch.cat([w * goal[:, -2], goal[:, -1]], -1), cfg.goal_reduce)


class FlopCounter:
    """Model FLOPs of named computations, counted on their first run and reused after: a plan's FLOPs
    do not depend on the images, only on what its name says (its iterations, the frames it encodes),
    and grow in proportion to the tasks planned for at once."""

    def __init__(self):
        self.flops: dict[str, float] = {}  # per task

    def run(self, what: str, fn: Callable[[], object], tasks: int = 1) -> float:
        """Run ``fn`` (for ``tasks`` tasks at once); its model FLOPs."""
        if what in self.flops:
            fn()
        else:
            with FlopCounterMode(display=False) as counter:
                fn()
            self.flops[what] = float(counter.get_total_flops()) / tasks
        return self.flops[what] * tasks


def as_batch(obs: np.ndarray, what: str = "image") -> tuple[np.ndarray, bool]:
    """Images ``(B, H, W, C)``, and whether ``obs`` was one image ``(H, W, C)``."""
    if not isinstance(obs, np.ndarray) or obs.dtype != np.uint8 or obs.ndim not in (3, 4):
        raise ValueError(f"the {what} must be an (H, W, C) uint8 numpy image, got "
                         f"{getattr(obs, 'dtype', type(obs).__name__)} {getattr(obs, 'shape', '')} (or a batch of "
                         f"them, (B, H, W, C))")
    return (obs[None], True) if obs.ndim == 3 else (obs, False)


class LatentMPCAgent:
    """Acts from images toward a goal in latent space: encodes its newest frames, plans, executes
    ``receding_horizon`` env steps of the plan, replans.

    Its goal is set by :meth:`reset` from a goal image, or by :meth:`set_goal` as frame latents, which
    may change between calls (a waypoint set by a planner above). Everything works on ``B`` tasks at once: images
    ``(B, H, W, C)`` and goals ``(B, h, latent_dim)``; one image ``(H, W, C)`` is a batch of one. Seeded with
    one seed per task (:meth:`seed`), each task draws from its own generator, so a batch plans as its tasks
    would one by one; :meth:`select` drops finished tasks from the batch.
    """

    def __init__(self, model: LatentModel, cfg: MPCConfig, action_low: np.ndarray, action_high: np.ndarray,
                 generator: torch.Generator, name: str = "latent-mpc", policy=None):
        layout = model.layout
        if uses_policy(cfg) and policy is None:
            raise ValueError(f"planner={cfg.planner!r}, proposal={cfg.proposal!r} needs the amortized policy; train "
                             f"one with `python experiments/train_policy.py install=true`")
        if len(action_low) != layout.action_dim:
            raise ValueError(f"the env's actions have {len(action_low)} values, the model's {layout.action_dim}")
        if cfg.receding_horizon > layout.env_steps(cfg.horizon):
            raise ValueError(f"receding_horizon {cfg.receding_horizon} must be at most the plan's "
                             f"{layout.env_steps(cfg.horizon)} env steps")
        self.model, self.cfg, self.gen, self.name = model, cfg, generator, name
        self.draws: torch.Generator | list[torch.Generator] = generator  # per task after seed([...])
        self.action_dim = layout.action_dim
        self.device, self.dtype = model.device, model.dtype
        self.env_bounds = Bounds(action_low, action_high).to(self.device, self.dtype)
        k = layout.action_block
        self.bounds = Bounds(np.tile(action_low, k), np.tile(action_high, k)).to(self.device, self.dtype)
        self.policy = policy
        self.planner = (make_planner(cfg.planner, getattr(cfg, cfg.planner), cfg.horizon, self.bounds)
                        if cfg.planner != POLICY else None)
        self.history = FrameHistory(layout, keep=layout.span)
        self.flops = FlopCounter()
        self.plan_seconds: list[float] = []
        self.plan_flops: list[float] = []  # model FLOPs of each replan
        self.goal: torch.Tensor | None = None
        self.last_plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (start, best plan, goal)
        self.warm, self.queue = None, []

    @torch.no_grad()
    def encode(self) -> torch.Tensor:
        """The model's states ``(B, state_dim)`` at the newest frames (what ``model.encode`` gives for
        them; a frame encoded by an earlier replan is not encoded again)."""
        L = self.model.layout
        z, a = self.history.latent_window(L.history, self.model.latents, self.device, self.dtype)
        return L.compose(z, L.blocks(a).to(z.dtype))

    def seed(self, seed: int | list[int]) -> None:
        """Reseed the planner's draws (the protocol does it before each task): one seed, or one per task
        of the next batch (each task's draws then come from a generator of its own)."""
        if isinstance(seed, (int, np.integer)):
            self.gen.manual_seed(int(seed))
            self.draws = self.gen
        else:
            self.draws = [torch.Generator(device=self.gen.device).manual_seed(int(s)) for s in seed]

    def select(self, keep) -> None:
        """Keep only the tasks ``keep`` (indices into the batch, in order): the others are finished."""
        keep = [int(i) for i in keep]
        idx = torch.as_tensor(keep, dtype=torch.long)
        self.history.select(keep)
        self.goal = self.goal[idx.to(self.goal.device)] if self.goal is not None else None
        self.queue = [a[keep] for a in self.queue]
        if self.warm is not None:
            self.warm = self.warm[idx.to(self.warm.device)]
        if self.last_plan is not None:
            self.last_plan = tuple(x[idx.to(x.device)] for x in self.last_plan)
        if not isinstance(self.draws, torch.Generator):
            self.draws = [self.draws[i] for i in keep]

    def check_images(self, obs: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
        """``obs`` as a batch of images of the model's size, and whether it was one image."""
        batch, single = as_batch(obs, what)
        shape = getattr(self.model, "image_shape", None)  # (C, H, W)
        if shape is not None and batch.shape[1:] != (shape[1], shape[2], shape[0]):
            raise ValueError(f"the {what} must have shape {(shape[1], shape[2], shape[0])} for this model, "
                             f"got {batch.shape[1:]}")
        return batch, single

    @torch.no_grad()
    def reset(self, goal_obs: np.ndarray) -> None:
        """Start tasks toward goal images ``(H, W, C)`` or ``(B, H, W, C)``, each a still scene."""
        goal_obs, _ = self.check_images(goal_obs, "goal image")
        self.history.clear()
        self.history.add_frame(goal_obs)
        self.set_goal(self.model.newest(self.encode()))
        self.history.clear()
        self.warm, self.queue, self.last_plan = None, [], None

    def set_goal(self, goal: torch.Tensor) -> None:
        """Plan toward ``goal`` from the next replan on: frame latents ``(B, h, latent_dim)``, oldest
        first, or one latent ``(B, latent_dim)`` (a still scene: itself at every boundary)."""
        self.goal = goal_frames(goal, self.model.layout.history)

    @property
    def replans_next(self) -> bool:
        """Whether the next :meth:`act` plans (its action queue is empty)."""
        return not self.queue

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The next actions ``(B, A)`` for observations ``(B, H, W, C)`` (``(A,)`` for one ``(H, W, C)``):
        :meth:`observe`, then :meth:`next_action`."""
        obs, single = self.check_images(obs, "observation")
        self.observe(obs)
        action = self.next_action()
        return action[0] if single else action

    def observe(self, obs: np.ndarray) -> None:
        """The newest observations ``(B, H, W, C)`` (the next replan starts from them)."""
        obs, _ = self.check_images(obs, "observation")
        if self.goal is None:
            raise RuntimeError("no goal: call reset(goal_obs) or set_goal(latents) before act")
        if len(obs) != len(self.goal):
            raise ValueError(f"{len(obs)} observations for {len(self.goal)} goals")
        self.history.add_frame(obs)

    def next_action(self) -> np.ndarray:
        """The actions ``(B, A)`` to take at the newest observations: the next of the plan, replanning
        first where the plan's executed part is used up."""
        if not self.queue:
            self.replan()
        action = self.queue.pop(0)
        self.history.add_action(action)
        return action

    @property
    @torch.no_grad()
    def reach(self) -> torch.Tensor | None:
        """Of the last plan ``(B,)``: the smallest squared distance (mean over latent dimensions) of its
        predicted newest latents from the goal's newest latent; computed when asked, off the plan's path."""
        if self.last_plan is None:
            return None
        s0, actions, goal = self.last_plan
        z = self.model.newest(self.model.rollout(s0, actions, check_inputs=False))  # (B, H, latent_dim)
        return ((z - goal[:, None]) ** 2).mean(-1).min(-1).values

    @property
    def distance(self) -> torch.Tensor | None:
        """Of the last plan ``(B,)``: the same distance of the newest frame's latent, where it started."""
        if self.last_plan is None:
            return None
        s0, _, goal = self.last_plan
        return ((self.model.newest(s0) - goal) ** 2).mean(-1)

    def replan(self, only=None) -> None:
        """Plan from the frames seen so far toward the goal; refill the action queue (what was left of
        it is dropped); record the time and model FLOPs. With ``only`` (indices into the batch), plan again
        for those tasks alone, after a plan for all: the others keep theirs."""
        if only is not None:
            return self._replan_some([int(i) for i in only])
        if self.goal is None:
            raise RuntimeError(f"{self.name}.replan() before a goal: call reset(goal_obs) or set_goal(latents) first")
        if not self.history.frames:
            raise RuntimeError(f"{self.name}.replan() before an observation: call act(obs) or observe(obs) first")
        start = time.perf_counter()
        warm = self.warm is not None or self.cfg.proposal == POLICY
        fewer = self.cfg.warm_iterations if warm else 0  # the first plan of an episode: all
        key = f"plan/iterations {fewer or 'all'}/frames {self.history.unencoded(self.model.layout.history)}"
        self.plan_flops.append(self.flops.run(key, lambda: self._plan(fewer or None), tasks=len(self.goal)))
        self.plan_seconds.append(time.perf_counter() - start)

    def _replan_some(self, tasks: list[int]) -> None:
        """:meth:`replan` for ``tasks`` alone: a copy of this agent narrowed to them plans (its times, FLOPs
        and draws are this agent's), and its plans replace theirs."""
        if len(self.queue) != self.cfg.receding_horizon:
            raise RuntimeError(f"{self.name}.replan(only=...) replaces some tasks' plans: plan for all first")
        part = copy.copy(self)
        part.history = copy.copy(self.history)
        part.select(tasks)
        part.replan()

        def merged(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            return mine.index_copy(0, torch.as_tensor(tasks, dtype=torch.long, device=mine.device), theirs.to(mine))

        self.queue = [np.array(mine, copy=True) for mine in self.queue]
        for mine, theirs in zip(self.queue, part.queue):
            mine[tasks] = theirs
        self.warm = merged(self.warm, part.warm)
        self.last_plan = tuple(merged(mine, theirs) for mine, theirs in zip(self.last_plan, part.last_plan))

    def _plan(self, iterations: int | None = None) -> None:
        """Plan from the newest frames toward ``self.goal`` (``iterations``: other than the planner's
        own); fill the action queue."""
        cfg = self.cfg
        s0 = self.encode()
        cost = goal_cost(self.model, s0, self.goal.to(s0), cfg)
        if cfg.action_penalty:
            cost = WeightedSum([(1.0, cost), (1.0, ActionPenalty(cfg.action_penalty))])
        grad = cfg.planner == "gradient"
        if cfg.planner == POLICY:  # only the blocks it executes: the rest of a plan is never used
            plan = self.policy_plan(s0, blocks=self.model.layout.blocks_covering(cfg.receding_horizon))
        else:
            proposal = self.policy_plan(s0) if cfg.proposal == POLICY else None
            warm = self.warm if self.warm is not None else proposal  # an episode's first plan: from the proposal
            with torch.enable_grad() if grad else torch.no_grad():
                plan = self.planner.plan(cost, len(s0), self.draws, warm_start=warm, iterations=iterations,
                                         proposal=proposal).actions
        env_actions = plan.detach().reshape(len(s0), -1, self.action_dim)  # (B, H*k, A)
        self.last_plan = (s0, plan.detach(), self.goal[:, -1].to(s0))
        executed = env_actions[:, : cfg.receding_horizon].float().cpu().numpy()  # (B, r, A)
        self.queue = [executed[:, t] for t in range(executed.shape[1])]
        # warm start: the rest of this plan, shifted by the env steps executed (states hold at any step)
        self.warm = shift_plan(env_actions, cfg.receding_horizon, self.env_bounds).reshape(len(s0), cfg.horizon, -1)

    @torch.no_grad()
    def policy_plan(self, s0: torch.Tensor, blocks: int | None = None) -> torch.Tensor:
        """The amortized policy's plan ``(B, horizon, block_dim)`` from states ``s0``: its action block,
        the model's next state, its next block there, and so on; with ``blocks``, only that many are
        rolled out and the last is repeated to the horizon."""
        goal, plan, s = self.goal[:, -1].to(s0), [], s0
        n = min(blocks or self.cfg.horizon, self.cfg.horizon)
        for t in range(n):
            plan.append(self.policy(s, goal).to(s0))
            if t + 1 < n:
                s = self.model.predict(s, plan[-1], check_inputs=False)
        return torch.stack(plan + plan[-1:] * (self.cfg.horizon - n), 1)
