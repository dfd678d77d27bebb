"""Every agent an evaluation runs, built in one place: ``make_agent(name, cfg, env, spec, levels)``.

An agent is named by what it is:

- ``<planner>-mpc``: the flat latent MPC agent with ``cfg.mpc`` and that planner (``cem``, ``icem``,
  ``mppi``, ``gradient``);
- ``<planner>-hier``: the same level 1 under the slow level's subgoals (``cfg.slow``);
- ``<planner>-<variant>``: a flat agent with the whole other MPC settings ``cfg.variants[<variant>]``;
- ``random``, ``zero``: reference policies; ``oracle``: CEM on the true simulator (``cfg.oracle``).

``agent_names(cfg, levels)`` lists the agents of an evaluation in the order they run. Every agent
draws from its own generator seeded with the task seed, so an agent's results do not depend on
which others run beside it. ``Levels.load(cfg)`` loads what the model-based agents plan with, each
checked against the env and against the level below it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from experiments.runs import check_trained_env
from experiments.schemas import PlanConfig
from planners.cem import CEMConfig
from planners.hierarchy import hierarchical_agent
from planners.mpc import PLANNERS, POLICY, LatentMPCAgent, uses_policy
from planners.oracle import OracleAgent
from planners.subgoals import NEEDS_REACH
from worldmodel.checkpoint import WEIGHTS
from worldmodel.dynamics import WorldModel
from worldmodel.evaluation import REFERENCE_AGENTS, make_baseline
from worldmodel.evaluation.reach import reach_threshold
from worldmodel.files import file_sha256
from worldmodel.hierarchy import SlowModel, load_slow
from worldmodel.hierarchy.reach import REACH_DIR, TemporalDistance
from worldmodel.policy import POLICY_DIR, GoalPolicy
from worldmodel.training import current_rank, resolve_device

FLAT, HIERARCHICAL = "mpc", "hier"


@dataclass
class Levels:
    """What the model-based agents plan with.

    Attributes:
        model: the level-1 world model (``None``: the run has only reference agents).
        slow: the slow level (``None``: no hierarchical agents).
        temporal: the learned temporal distance (the hand-down rule ``learned``).
        reach: the calibrated reach threshold the hand-down rule reads (``calibrate``), as
            ``reach_threshold`` returns it.
        policy: the amortized goal-conditioned policy (``<model>/policy``), where an agent plans with it.
    """

    model: WorldModel | None = None
    slow: SlowModel | None = None
    temporal: TemporalDistance | None = None
    reach: dict | None = None
    policy: GoalPolicy | None = None

    @classmethod
    def load(cls, cfg: PlanConfig) -> Levels:
        """The levels ``cfg`` names (``model``, ``slow_path`` with ``hierarchy``, ``<model>/reach`` for the
        rule ``learned``), each checked before anything is collected."""
        if not cfg.model:
            return cls()
        model = load_model(cfg)
        slow = load_slow_level(cfg, model) if cfg.hierarchy else None
        temporal = load_temporal_distance(cfg, model) if slow is not None and cfg.slow.hand_down == "learned" else None
        return cls(model, slow, temporal, policy=load_policy(cfg, model) if needs_policy(cfg) else None)

    def calibrate(self, cfg: PlanConfig, spec) -> None:
        """Measure the reach threshold in the simulator, where the slow level's hand-down rule needs one."""
        if self.slow is None or cfg.slow.hand_down not in NEEDS_REACH:
            return
        env = cfg.env.make(max_episode_steps=cfg.max_budget)
        try:
            self.reach = reach_threshold(env, spec, self.model, cfg.slow.reach_quantile)
        finally:
            env.close()
        print(f"reach threshold {self.reach['threshold']:.4g}: the {self.reach['quantile']:.0%} quantile of the "
              f"latent distance of {self.reach['pairs']} image pairs within the success tolerance")


def agent_names(cfg: PlanConfig, levels: Levels) -> list[str]:
    """The agents of an evaluation, in the order they run: for each planner its flat agent (unless
    ``flat=false``) and, with a slow level, its hierarchical one; then the MPC variants; then the
    reference agents."""
    names = []
    if levels.model is not None:
        for planner in cfg.planner_names:
            hier = levels.slow is not None and planner != POLICY  # the slow level plans its subgoals by search
            names += [f"{planner}-{FLAT}"] * cfg.flat + [f"{planner}-{HIERARCHICAL}"] * hier
        names += [cfg.variant_name(v) for v in cfg.variants]
    return names + list(cfg.baselines)


def make_agent(name: str, cfg: PlanConfig, env, spec, levels: Levels):
    """The agent called ``name`` (see the module's docstring), acting in ``env``'s action box."""
    if name in REFERENCE_AGENTS:
        return reference_agent(name, cfg, env, spec)
    planner, _, kind = name.partition("-")
    known = agent_names(cfg, levels)
    if name not in known or (planner not in PLANNERS and planner != POLICY):
        raise ValueError(f"no agent {name!r} in this evaluation; its agents are {known}")
    low, high = env.action_space.low, env.action_space.high
    generator = torch.Generator().manual_seed(cfg.task_seed)
    if kind == FLAT:
        mpc = replace(cfg.mpc, planner=planner, proposal="none" if planner == POLICY else cfg.mpc.proposal)
        return LatentMPCAgent(levels.model, mpc, low, high, generator, name=name, policy=levels.policy)
    if kind == HIERARCHICAL:
        reach = levels.reach["threshold"] if levels.reach else None
        return hierarchical_agent(levels.model, levels.slow, replace(cfg.mpc, planner=planner), cfg.slow, low, high,
                                  generator, name=name, reach=reach, temporal=levels.temporal, policy=levels.policy)
    return LatentMPCAgent(levels.model, cfg.variants[kind], low, high, generator, name=name, policy=levels.policy)


def reference_agent(name: str, cfg: PlanConfig, env, spec):
    """``random``, ``zero``, or ``oracle``: CEM with the true simulator (``cfg.oracle``; by default the
    settings docs/protocol.md gives for Reacher: 200 samples, 5 iterations, horizon 10, replanning every
    2 steps), aiming at the env's privileged waypoints where it has them (the maze's shortest path)."""
    if name == "oracle":
        o = cfg.oracle
        cem = CEMConfig(samples=o.samples, elites=o.elites, iterations=o.iterations)
        return OracleAgent(env, spec, cem, horizon=o.horizon, receding_horizon=o.receding_horizon,
                           generator=torch.Generator().manual_seed(cfg.task_seed))
    return make_baseline(name, env.action_space, np.random.default_rng(cfg.task_seed + 1))


def load_model(cfg: PlanConfig) -> WorldModel:
    """The world model ``cfg.model``, checked against the env before anything is collected."""
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(
            f"world model {cfg.model!r} not found (expected a checkpoint directory); build the default one with "
            f"`python experiments/build_default_model.py env={cfg.env.name}`, or pass model='' to run only the "
            f"baselines"
        )
    check_trained_env(cfg.env, cfg.model)
    model = WorldModel.from_pretrained(cfg.model, resolve_device(cfg.device, current_rank()), cfg.allow_unverified)
    if model.image_shape[-1] != cfg.env.image_size:
        raise ValueError(f"model {cfg.model} takes {model.image_shape[-1]}px images, env gives "
                         f"{cfg.env.image_size}px")
    return model


def check_level1(cfg: PlanConfig, path: Path, what: str, retrain: str) -> None:
    """Refuse ``path`` (a slow level or a temporal distance) trained on another env, or on the latents of
    another level-1 model than ``cfg.model`` (``retrain``: the command that trains one for it)."""
    trained = check_trained_env(cfg.env, str(path), what)
    level1 = trained.get("level1_weights_sha256")  # trained before it was recorded: unchecked
    if level1 is not None and level1 != file_sha256(Path(cfg.model) / WEIGHTS):
        raise ValueError(f"{what} {path} was trained on the latents of the level-1 model {trained.get('level1')!r} "
                         f"(weights sha256 {level1[:12]}...), not on those of {cfg.model}; train one for it with "
                         f"`{retrain}`")


def needs_policy(cfg: PlanConfig) -> bool:
    """Whether an agent of the evaluation plans with the amortized policy (as its planner or its proposal)."""
    return POLICY in cfg.planner_names or uses_policy(cfg.mpc) or any(uses_policy(v) for v in cfg.variants.values())


def load_policy(cfg: PlanConfig, model: WorldModel) -> GoalPolicy:
    """The amortized policy ``<model>/policy``, checked against the level-1 model's layout."""
    policy = GoalPolicy.from_pretrained(Path(cfg.model) / POLICY_DIR, model.device, cfg.allow_unverified)
    if policy.layout != model.layout:
        raise ValueError(f"{cfg.model}/{POLICY_DIR} was trained on states of layout {policy.layout}, the model's is "
                         f"{model.layout}; train it again with `python experiments/train_policy.py model={cfg.model} "
                         f"install=true`")
    return policy


def load_slow_level(cfg: PlanConfig, model: WorldModel) -> SlowModel:
    """The slow level ``cfg.slow_path``, checked against the env and the level-1 model's layout."""
    if Path(cfg.slow_path).is_dir():
        check_level1(cfg, Path(cfg.slow_path), "slow level", f"python experiments/train_slow.py model={cfg.model}")
    return load_slow(cfg.slow_path, model.layout, model.device, cfg.allow_unverified)


def load_temporal_distance(cfg: PlanConfig, model: WorldModel) -> TemporalDistance:
    """The learned temporal distance ``<model>/reach`` (the hand-down rule ``learned``), checked against
    the env and the level-1 model whose latents it reads."""
    path = Path(cfg.model) / REACH_DIR
    if path.is_dir():
        check_level1(cfg, path, "the temporal distance",
                     f"python experiments/train_reach.py model={cfg.model} install=true")
    head = TemporalDistance.from_pretrained(path, model.device, cfg.allow_unverified)
    if head.latent_dim != model.layout.latent_dim:
        raise ValueError(f"the temporal distance {path} reads {head.latent_dim}-dim latents, the model has "
                         f"{model.layout.latent_dim}")
    return head
