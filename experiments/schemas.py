"""Typed schemas of the entry points. Each holds its parts as fields: ``env`` (the env and its
rendering), ``data`` (the dataset it reads, with the same keys as ``collect.py``'s; the splits it
needs are collected first when missing), and what it runs (``model``, ``train``, the planner's
settings), each part checked in its own ``__post_init__``. These schemas are the only place where
the library's configs meet the planners' and the command line's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from planners.mpc import PLANNERS, POLICY, MPCConfig
from planners.subgoals import SlowPlanConfig
from envs.config import EnvConfig, check_patch_grid
from worldmodel.data.config import DataConfig
from worldmodel.dynamics import DynamicsConfig, DynamicsTrainConfig
from worldmodel.dynamics.distill import DistillTrainConfig
from worldmodel.evaluation import BASELINES, REFERENCE_AGENTS
from worldmodel.files import flatten
from worldmodel.hierarchy import SLOW_DIR, SlowConfig, SlowTrainConfig
from worldmodel.hierarchy.reach import ReachConfig, ReachTrainConfig
from worldmodel.jepa import JEPAConfig, JEPATrainConfig
from worldmodel.policy import PolicyConfig, PolicyTrainConfig
from worldmodel.training.distributed import check_device_name


def check_resume_allow(cfg) -> None:
    """Every key of ``cfg.resume_allow`` names a setting of ``cfg`` (or ``dataset_checksum``)."""
    known = set(flatten(asdict(cfg))) | {"dataset_checksum"}
    unknown = [k for k in cfg.resume_allow if k not in known]
    if unknown:
        raise ValueError(f"resume_allow names unknown settings {unknown}; use dotted keys such as train.steps")


def require_episodes(data: DataConfig, split: str, purpose: str) -> None:
    """Refuse a dataset without ``<split>_episodes``, naming what the stage needs them for."""
    if getattr(data, f"{split}_episodes") < 1:
        raise ValueError(f"data.{split}_episodes must be >= 1 {purpose}, got {getattr(data, f'{split}_episodes')}")


PROTOCOLS = ("recorded", "maze")
DEFAULT_MODEL = "default"


PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # where the shipped models live


def default_model(cfg) -> str:
    """``cfg.model``, with ``default`` meaning the env's shipped model ``models/<env.model_name>``
    (``models/reacher``, ``models/pointmaze``, ``models/pointmaze-large``): relative to the working
    directory where it has one (a rebuilt model), else the package's own."""
    if cfg.model != DEFAULT_MODEL:
        return cfg.model
    relative = f"models/{cfg.env.model_name}"
    return relative if Path(relative).is_dir() else str(PACKAGE_ROOT / relative)


def structured(key: str, cls: type, value, expected: str):
    """``value`` (a ``cls`` or a mapping of some of its fields, the rest their defaults) as a ``cls``: what a
    dict-valued setting holds, so that ``+key.<new>...`` can add entries from the command line. A field it
    does not have, or a value of the wrong type, is a clear error naming ``key`` and the ``expected`` form."""
    if isinstance(value, cls):
        return value
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), value))
    except (OmegaConfBaseException, ValueError) as e:
        raise ValueError(f"{key}={value} {expected}: {str(e).splitlines()[0]}") from None


@dataclass
class DistanceBin:
    """A bin of the ``maze`` protocol: task distances ``lo..hi`` (cells, both included) and the
    budget of env steps its tasks get."""

    lo: int = 1
    hi: int = 3
    budget: int = 100

    def __post_init__(self):
        if not 1 <= self.lo <= self.hi or self.budget < 1:
            raise ValueError(f"a distance bin needs 1 <= lo <= hi and budget >= 1, got lo={self.lo}, hi={self.hi}, "
                             f"budget={self.budget}")


@dataclass
class OracleConfig:
    """The privileged oracle's CEM on the true simulator (``baselines: [oracle]``). The defaults are
    the Reacher oracle's settings in docs/protocol.md."""

    samples: int = 200
    elites: int = 20
    iterations: int = 5
    horizon: int = 10
    receding_horizon: int = 2


@dataclass
class PlanConfig:
    """The dataset whose held-out split supplies the tasks, plus the protocol's settings.

    Attributes:
        env: the environment and its rendering.
        data: the dataset it reads.
        model: world-model checkpoint directory to plan with; ``default``: the env's shipped model
            ``models/<env.model_name>``; empty = baselines only.
        mpc: the planner and its receding horizon.
        hierarchy: run a hierarchical agent (``<planner>-hier``: the slow level's subgoal planner over a
            flat agent with the ``mpc`` settings) next to each flat one (``<planner>-mpc``), on by
            default; ``false``: the flat agents only (for a model without a slow level).
        slow: the slow level's planning settings (with ``hierarchy``).
        slow_model: the slow level the hierarchical agents plan with (empty: ``<model>/slow``).
        subgoals: the slow plan's subgoal chunk by maze layout (``env.maze``); the maze's
            config file sets ``slow.subgoal`` from it (empty for the other envs).
        flat: run the flat agents (``false``: only the hierarchical ones, e.g. in ablations).
        planners: planners compared side by side with the same model and ``mpc`` settings
            (``cem``, ``icem``, ``mppi``, ``gradient``); empty: only ``mpc.planner``.
        variants: further flat agents with whole other MPC settings, by name, run on the same
            tasks after the planners (``<planner>-<name>``; e.g. ``peers``: the CEM settings the
            published numbers were measured with). Each is an ``MPCConfig`` (unset keys take its
            defaults, not ``mpc``'s).
        protocol: ``recorded`` (tasks from the held-out episodes: the goal ``goal_offset`` steps
            after the start) or ``maze`` (start and goal at rest in cells whose shortest-path
            distance falls in one of ``bins``; ``episodes`` tasks per bin).
        episodes: evaluation tasks (start/goal pairs) drawn from the held-out split; with the
            ``maze`` protocol, tasks per bin.
        goal_offset: env steps between the start and the goal frame (``recorded``).
        budget: env steps the agent may take (``recorded``; each ``maze`` bin has its own).
        bins: the ``maze`` protocol's distance bins, by name.
        oracle: the privileged oracle's planning settings.
        only_tasks: run only these tasks of the draw (their indices, 0-based), each with the seed it
            has in the whole evaluation, and record a video of each (to look at one task again).
        task_seed: seed of the task draw, the planner and the random-action baseline.
        baselines: reference agents run in the same invocation: ``random``, ``zero``, and
            ``oracle`` (the same CEM planning with the true simulator; an upper bound).
        videos: planner episodes written as GIFs (current | goal).
        batch_tasks: tasks a latent planner plays at once, each in an env of its own, its candidates
            evaluated for all of them in one model call per iteration (1: one after another). Each
            task keeps its seed and its draws, so the results are the one-by-one results up to the
            float noise of batched arithmetic.
        output_dir: where the JSON result, the task journal and the videos are written.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for the model.
        resume: continue an interrupted evaluation with the same settings from its task
            journal in ``output_dir`` (finished tasks are not run again).
        allow_unverified: load checkpoints whose ``config.json`` records no ``weights_sha256`` (refused
            otherwise: their weights cannot be checked).
        progress: show progress bars (the collection of missing episodes, the tasks).
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: str = DEFAULT_MODEL
    mpc: MPCConfig = field(default_factory=MPCConfig)
    hierarchy: bool = True
    slow: SlowPlanConfig = field(default_factory=SlowPlanConfig)
    slow_model: str = ""
    subgoals: dict[str, int] = field(default_factory=dict)
    flat: bool = True
    planners: list[str] = field(default_factory=list)
    variants: dict[str, Any] = field(default_factory=dict)  # MPCConfig each (untyped: +variants.<new>.<key>=...)
    protocol: str = "recorded"
    bins: dict[str, Any] = field(default_factory=dict)  # DistanceBin each; untyped so that +bins.<new>=... works
    oracle: OracleConfig = field(default_factory=OracleConfig)
    only_tasks: list[int] = field(default_factory=list)
    episodes: int = 100
    goal_offset: int = 25
    budget: int = 50
    task_seed: int = 0
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    videos: int = 3
    batch_tasks: int = 1
    output_dir: str = "results"
    device: str = "auto"
    resume: bool = False
    allow_unverified: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.episodes < 1 or self.budget < 1:
            raise ValueError(f"episodes and budget must be >= 1, got {self.episodes}, {self.budget}")
        if not 1 <= self.goal_offset <= self.env.episode_steps:
            raise ValueError(
                f"goal_offset must be in [1, env.episode_steps={self.env.episode_steps}], got {self.goal_offset}"
            )
        self.model = default_model(self)
        if not self.flat and not self.hierarchy:
            raise ValueError("flat=false runs only the hierarchical agents: it needs hierarchy=true")
        if self.slow_model and not self.hierarchy:
            raise ValueError(f"slow_model={self.slow_model!r} is planned with only by the hierarchical agents, "
                             "and hierarchy=false runs none: drop one of the two")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        self.variants = {name: structured(f"variants.{name}", MPCConfig, v, "is not MPC settings (keys of MPCConfig: "
                                          "planner, horizon, cem.samples, ...)") for name, v in self.variants.items()}
        for name in self.planners:
            if name not in PLANNERS and name != POLICY:
                raise ValueError(f"planners lists {name!r}; expected a subset of {sorted(PLANNERS) + [POLICY]}")
        for key in ("planners", "baselines", "only_tasks"):
            values = list(getattr(self, key))
            if len(set(values)) != len(values):
                twice = sorted({v for v in values if values.count(v) > 1})
                raise ValueError(f"{key}={values} names {twice} more than once; each is run (and counted) once")
        if self.protocol == "maze":
            if not self.bins:
                raise ValueError("protocol=maze needs distance bins (bins.<name>: {lo, hi, budget})")
            self.bins = {name: structured(f"bins.{name}", DistanceBin, b, "must be {lo, hi, budget}")
                         for name, b in self.bins.items()}
            ranked = sorted(self.bins.items(), key=lambda kv: kv[1].lo)
            for (a, x), (b, y) in zip(ranked, ranked[1:]):
                if y.lo <= x.hi:
                    raise ValueError(f"distance bins {a} ({x.lo}-{x.hi}) and {b} ({y.lo}-{y.hi}) overlap: a task would "
                                     f"be drawn into both; give them disjoint cell ranges")
            return self._check_agents()
        require_episodes(self.data, "heldout", "to evaluate")
        pairs = self.data.heldout_episodes * (self.env.episode_steps - self.goal_offset + 1)
        if self.episodes > pairs:
            raise ValueError(f"episodes={self.episodes} distinct tasks asked for, but {self.data.heldout_episodes} "
                             f"held-out episodes of {self.env.episode_steps} steps hold at most {pairs} (episode, "
                             f"start) pairs with goal_offset={self.goal_offset}; collect more "
                             f"(data.heldout_episodes=...) or ask for fewer")
        self._check_agents()

    def _check_agents(self) -> None:
        if self.batch_tasks < 1:
            raise ValueError(f"batch_tasks must be >= 1 (tasks played at once), got {self.batch_tasks}")
        if self.videos < 0 or self.task_seed < 0:
            raise ValueError(f"videos and task_seed must be >= 0, got {self.videos}, {self.task_seed}")
        if self.task_seed >= 2**63:
            raise ValueError(f"task_seed must be < 2**63 (a torch seed), got {self.task_seed}")
        check_device_name(self.device)
        for name in self.baselines:
            if name not in REFERENCE_AGENTS:
                raise ValueError(f"unknown baseline {name!r}; expected a subset of {list(REFERENCE_AGENTS)}")
        names = [self.variant_name(v) for v in self.variants] + [f"{p}-{kind}" for p in self.planner_names
                                                                 for kind in ("mpc", "hier")]
        if len(set(names)) != len(names) or set(names) & set(self.baselines):
            raise ValueError(f"variants {list(self.variants)} would give two agents one name ({names})")

    def variant_name(self, name: str) -> str:
        """The agent name of MPC variant ``name``: ``<its planner>-<name>``."""
        return f"{self.variants[name].planner}-{name}"

    @property
    def planner_names(self) -> list[str]:
        """The planners this evaluation runs, in order."""
        return list(self.planners) or [self.mpc.planner]

    @property
    def slow_path(self) -> str:
        """The slow level the hierarchical agents plan with: ``slow_model``, else ``<model>/slow``."""
        return self.slow_model or f"{self.model}/{SLOW_DIR}"

    @property
    def max_budget(self) -> int:
        """The longest budget any task gets."""
        return max(b.budget for b in self.bins.values()) if self.protocol == "maze" else self.budget


@dataclass
class PretrainConfig:
    """JEPA pretraining on the train split of a dataset.

    Attributes:
        env: the environment and its rendering.
        data: the dataset it reads.
        model: the JEPA (its encoder's image size must equal the env's, and tile into its patches).
        train: optimisation settings.
        out_dir: run directory (log.csv, loss.png, summary.json, checkpoint/).
        resume: continue from ``out_dir/checkpoint`` when it exists (with the same settings).
        resume_allow: dotted settings allowed to differ from the checkpoint's on resume
            (e.g. ``[train.steps]`` to extend a run; ``dataset_checksum`` for other data).
        probe_train_frames: frames of the train split the end-of-run linear probe fits on.
        probe_test_frames: held-out frames it is scored on.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: JEPAConfig = field(default_factory=JEPAConfig)
    train: JEPATrainConfig = field(default_factory=JEPATrainConfig)
    out_dir: str = "runs/pretrain"
    resume: bool = False
    resume_allow: list[str] = field(default_factory=list)
    probe_train_frames: int = 4000
    probe_test_frames: int = 2000

    def __post_init__(self):
        enc = self.model.encoder
        if enc.image_size != self.env.image_size:
            raise ValueError(f"model.encoder.image_size ({enc.image_size}) must equal env.image_size "
                             f"({self.env.image_size})")
        check_patch_grid(self.env.image_size, enc.patch_size)
        require_episodes(self.data, "heldout", "for the probe")
        if min(self.probe_train_frames, self.probe_test_frames) < 1:
            raise ValueError(f"probe_train_frames and probe_test_frames must be >= 1, got {self.probe_train_frames}, "
                             f"{self.probe_test_frames}")
        check_resume_allow(self)


@dataclass
class DynamicsExperimentConfig:
    """Training the action-conditioned predictor on a frozen pretrained encoder.

    Attributes:
        env: the environment and its rendering.
        data: the dataset it reads.
        encoder_checkpoint: pretraining checkpoint whose (EMA) encoder is frozen.
        dynamics: latent state and predictor settings.
        train: optimisation settings (``train.seed``: initial weights and window draws).
        projection_seed: seed of the frame encoder's fit before training (the principal
            components); kept apart from ``train.seed`` so that runs of several training
            seeds share one feature cache.
        feature_cache: directory of cached projections and feature tables (file names hold
            a digest of everything that determines their content).
        out_dir: run directory (log.csv, loss.png, summary.json, checkpoint/).
        resume: continue from ``out_dir/checkpoint`` when it exists (with the same settings).
        resume_allow: dotted settings allowed to differ from the checkpoint's on resume.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    encoder_checkpoint: str = "runs/pretrain/reacher-small/checkpoint"
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    train: DynamicsTrainConfig = field(default_factory=DynamicsTrainConfig)
    projection_seed: int = 0
    feature_cache: str = "runs/cache"
    out_dir: str = "runs/dynamics/reacher"
    resume: bool = False
    resume_allow: list[str] = field(default_factory=list)

    def __post_init__(self):
        require_episodes(self.data, "val", "to validate the predictor")
        if not 0 <= self.projection_seed < 2**63:
            raise ValueError(f"projection_seed must be >= 0 and < 2**63, got {self.projection_seed}")
        check_resume_allow(self)


@dataclass
class DistillExperimentConfig:
    """Distilling a trained world model's predictor into a narrower one (``worldmodel.dynamics.distill``).

    Attributes:
        env: the environment and its rendering.
        data: the dataset it reads.
        model: the teacher (``default``: the env's shipped model); its frame encoder and head are kept.
        hidden: the student predictor's hidden width.
        depth: the student predictor's hidden layers.
        train: optimisation settings (``train.horizon``: model steps per distilled rollout).
        feature_cache: directory of cached feature tables (shared with ``train_dynamics.py``).
        out_dir: run directory (log.csv, loss.png, summary.json, checkpoint/: the whole student, a
            world model ``plan.py model=<out_dir>/checkpoint`` loads).
        resume: continue from ``out_dir/checkpoint`` (with the same settings).
        resume_allow: dotted settings allowed to differ from the checkpoint's on resume.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: str = DEFAULT_MODEL
    hidden: int = 256
    depth: int = 3
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)
    feature_cache: str = "runs/cache"
    out_dir: str = "runs/distill/reacher"
    resume: bool = False
    resume_allow: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.model = default_model(self)
        require_episodes(self.data, "val", "to validate the student")
        if self.hidden < 1 or self.depth < 1:
            raise ValueError(f"hidden and depth must be >= 1, got {self.hidden}, {self.depth}")
        check_resume_allow(self)


@dataclass
class SlowExperimentConfig:
    """Training the slow level (level 2) of a trained world model on the data its level 1 trained on.

    Attributes:
        env: the environment and its rendering.
        data: the dataset it reads.
        model: the level-1 world model (``default``: the env's shipped model); its frame encoder and head
            (fixed) give the level-1 latents.
        slow: the slow level's settings.
        jepa_train: stage 1, the temporal encoder's JEPA pretraining (``slow.state=jepa`` only).
        train: stage 2, the macro-action encoder and slow predictor.
        macro_prior_chunks: training chunks the plan coordinates are fitted to.
        atlas_frames: training frames kept with the slow level (``atlas.npz``) to show subgoals in videos.
        feature_cache: directory of cached feature tables (shared with ``train_dynamics.py``).
        out_dir: run directory: ``jepa/`` and ``dynamics/`` (each with its checkpoint, log and
            plot), ``slow/`` (the finished slow level) and ``summary.json``.
        install: also write the finished slow level into ``<model>/slow``, where ``plan.py`` finds it.
        resume: continue both stages from their checkpoints (with the same settings).
        resume_allow: dotted settings allowed to differ from the checkpoint's on resume.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: str = DEFAULT_MODEL
    slow: SlowConfig = field(default_factory=SlowConfig)
    jepa_train: SlowTrainConfig = field(default_factory=lambda: SlowTrainConfig(steps=2000))
    train: SlowTrainConfig = field(default_factory=SlowTrainConfig)
    macro_prior_chunks: int = 20000
    atlas_frames: int = 400
    feature_cache: str = "runs/cache"
    out_dir: str = "runs/slow"
    install: bool = False
    resume: bool = False
    resume_allow: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.model = default_model(self)
        require_episodes(self.data, "val", "to validate the slow level")
        if self.macro_prior_chunks < 2 or self.atlas_frames < 1:
            raise ValueError(f"macro_prior_chunks must be >= 2 and atlas_frames >= 1, got {self.macro_prior_chunks}, "
                             f"{self.atlas_frames}")
        check_resume_allow(self)


@dataclass
class ReachExperimentConfig:
    """Training a learned temporal distance between level-1 latents (the hand-down rule ``learned``)
    on the data level 1 trained on.

    Attributes:
        env: the environment and its rendering.
        data: the dataset it reads.
        model: the level-1 world model (``default``: the env's shipped model).
        reach: the head's settings.
        train: its optimisation.
        feature_cache: directory of cached feature tables (shared with ``train_dynamics.py``).
        out_dir: run directory: ``checkpoint/``, ``log.csv``, ``loss.png``, ``reach/`` (the finished
            head) and ``summary.json``.
        install: also write the finished head into ``<model>/reach``, where ``plan.py`` finds it.
        resume: continue from the checkpoint (with the same settings).
        resume_allow: dotted settings allowed to differ from the checkpoint's on resume.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: str = DEFAULT_MODEL
    reach: ReachConfig = field(default_factory=ReachConfig)
    train: ReachTrainConfig = field(default_factory=ReachTrainConfig)
    feature_cache: str = "runs/cache"
    out_dir: str = "runs/reach"
    install: bool = False
    resume: bool = False
    resume_allow: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.model = default_model(self)
        require_episodes(self.data, "val", "to validate the temporal distance")
        check_resume_allow(self)


@dataclass
class PolicyExperimentConfig:
    """Training the amortized goal-conditioned policy on the level-1 latents of the data level 1 trained on.

    Attributes:
        env: the environment and its rendering.
        data: the dataset it reads.
        model: the level-1 world model (``default``: the env's shipped model).
        policy: the network's settings.
        train: its optimisation.
        feature_cache: directory of cached feature tables (shared with ``train_dynamics.py``).
        out_dir: run directory: ``checkpoint/``, ``log.csv``, ``loss.png``, ``policy/`` (the finished
            policy) and ``summary.json``.
        install: also write the finished policy into ``<model>/policy``, where ``plan.py`` finds it.
        resume: continue from the checkpoint (with the same settings).
        resume_allow: dotted settings allowed to differ from the checkpoint's on resume.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: str = DEFAULT_MODEL
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: PolicyTrainConfig = field(default_factory=PolicyTrainConfig)
    feature_cache: str = "runs/cache"
    out_dir: str = "runs/policy"
    install: bool = False
    resume: bool = False
    resume_allow: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.model = default_model(self)
        require_episodes(self.data, "val", "to validate the policy")
        check_resume_allow(self)


@dataclass
class ProbeConfig:
    """Probing a world model's latents: frames, open-loop rollouts, surprise.

    Attributes:
        env: the environment and its rendering.
        data: the dataset it reads.
        model: world-model checkpoint directory.
        quantities: recorded physical quantities to probe (empty = all in the dataset).
        probes: probe kinds, ``linear`` and/or ``mlp``.
        baselines: extra representations probed in the same run: ``random_encoder``
            (same architecture, random init) and ``pixels`` (downsampled frames).
        train_probe_episodes: training episodes the probes are fitted on.
        mlp_steps: optimiser steps of each MLP probe.
        pixel_size: side of the downsampled frames of the ``pixels`` baseline.
        horizon: open-loop model steps for the rollout probes.
        window_stride: held-out rollout windows start every ``window_stride`` frames.
        surprise_episodes: held-out segments replayed for the surprise test.
        surprise_steps: model steps per segment.
        event_step: the model step during which the event is injected.
        probe_seed: seed of the episode choice, the MLP probes and the surprise segments.
        output_dir: where the JSON, Markdown and plots go.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show progress bars.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: str = DEFAULT_MODEL
    quantities: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=lambda: ["linear", "mlp"])
    baselines: list[str] = field(default_factory=lambda: ["random_encoder", "pixels"])
    train_probe_episodes: int = 200
    mlp_steps: int = 3000
    pixel_size: int = 16
    horizon: int = 6
    window_stride: int = 3
    surprise_episodes: int = 100
    surprise_steps: int = 6
    event_step: int = 3
    probe_seed: int = 0
    output_dir: str = "results/probe"
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        self.model = default_model(self)
        unknown = [p for p in self.probes if p not in ("linear", "mlp")] + [
            b for b in self.baselines if b not in ("random_encoder", "pixels")]
        if unknown or not self.probes:
            raise ValueError(f"probes must be a non-empty subset of [linear, mlp] and baselines a subset of "
                             f"[random_encoder, pixels]; got probes={self.probes}, baselines={self.baselines}")
        if min(self.train_probe_episodes, self.mlp_steps, self.pixel_size, self.horizon, self.window_stride,
               self.surprise_episodes, self.surprise_steps) < 1:
            raise ValueError(f"counts and sizes must be >= 1, got {self}")
        if not 0 <= self.event_step < self.surprise_steps:
            raise ValueError(f"event_step must be in [0, surprise_steps={self.surprise_steps}), got {self.event_step}")
        check_device_name(self.device)
        require_episodes(self.data, "heldout", "to probe held-out episodes")
        if not 0 <= self.probe_seed < 2**63:
            raise ValueError(f"probe_seed must be >= 0 and < 2**63, got {self.probe_seed}")
