"""Settings of offline data collection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from envs.config import EnvConfig
from envs.registry import get_spec
from worldmodel.data.policies import POLICIES, make_policy
from worldmodel.data.storage import SPLITS, split_groups
from worldmodel.files import check_dir_name, config_hash

MAX_EPISODES = 10_000_000  # per split: 10 million episodes is beyond any disk here
MAX_SEED = 2**63


@dataclass
class PolicyConfig:
    """Behaviour policy.

    Attributes:
        name: ``uniform`` (i.i.d. uniform torques), ``correlated`` (AR(1) noise), ``mixed``
            (each episode one or the other) or ``expert`` (the env's scripted expert, with noise,
            and uniform episodes).
        beta: correlation of consecutive actions (``correlated`` and ``mixed``).
        sigma: stationary std in half-widths of the action box (``correlated`` and ``mixed``); the
            expert's action noise (``expert``).
        uniform_fraction: share of uniform episodes (``mixed`` and ``expert``).
    """

    name: str = "uniform"
    beta: float = 0.8
    sigma: float = 0.3
    uniform_fraction: float = 0.5

    def __post_init__(self):
        if self.name not in POLICIES:
            raise ValueError(f"unknown behaviour policy {self.name!r}; expected one of {sorted(POLICIES)}")
        if not 0 <= self.beta < 1 or not self.sigma > 0:
            raise ValueError(f"policy.beta must be in [0, 1) and policy.sigma > 0, got beta={self.beta}, "
                             f"sigma={self.sigma}")

    def build(self):
        """The behaviour policy these settings describe."""
        params = {"beta": self.beta, "sigma": self.sigma} if self.name in ("correlated", "mixed") else {}
        if self.name in ("mixed", "expert"):
            params["uniform_fraction"] = self.uniform_fraction
        if self.name == "expert":
            params["sigma"] = self.sigma
        return make_policy(self.name, **params)


@dataclass
class DataConfig:
    """A dataset of an env (the env is a part of its own): which episodes, how many, and where.

    Attributes:
        policy: the behaviour policy.
        train_episodes: episodes in the training split (drawn from ``seed``).
        val_episodes: episodes in the validation split (also from ``seed``).
        heldout_episodes: held-out evaluation episodes, drawn from ``eval_seed``.
        seed: seed of the train and validation episodes.
        eval_seed: seed of the held-out episodes; must differ from ``seed``.
        num_envs: environments stepped in parallel (subprocesses) while collecting.
        root: directory that holds datasets.
        name: dataset directory name; derived from the settings when empty.
        minari: also write each split as a Minari dataset (the exchange format).
    """

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train_episodes: int = 1000
    val_episodes: int = 50
    heldout_episodes: int = 100
    seed: int = 0
    eval_seed: int = 1000
    num_envs: int = 2
    root: str = "data"
    name: str = ""
    minari: bool = True

    def __post_init__(self):
        for key in ("train_episodes", "val_episodes", "heldout_episodes"):
            if not 0 <= getattr(self, key) <= MAX_EPISODES:
                raise ValueError(f"data.{key} must be in [0, {MAX_EPISODES:,}], got {getattr(self, key):,}")
        if self.train_episodes < 1:
            raise ValueError(f"data.train_episodes must be >= 1, got {self.train_episodes}")
        if not (0 <= self.seed < MAX_SEED and 0 <= self.eval_seed < MAX_SEED):
            raise ValueError(f"data.seed and data.eval_seed must be >= 0 and < 2**63 (numpy and torch seeds), got "
                             f"seed={self.seed}, eval_seed={self.eval_seed}")
        check_dir_name("data.name", self.name)
        if self.seed == self.eval_seed:
            raise ValueError(f"data.eval_seed ({self.eval_seed}) must differ from data.seed ({self.seed})")
        if self.num_envs < 1:
            raise ValueError(f"data.num_envs must be >= 1, got {self.num_envs}")

    def identity(self, env: EnvConfig, splits: tuple[str, ...] = SPLITS) -> dict:
        """Everything that determines the content of ``splits`` on ``env`` (what ``dataset_identity`` reads
        back from a manifest): the env and its rendering, the policy, and each split group's seed and counts."""
        spec = get_spec(env.name)
        out = {"env": {"name": spec.name, "version": spec.version, "episode_steps": env.episode_steps,
                       "kwargs": env.env_kwargs()},
               "policy": self.policy.build().params()}
        groups = split_groups(splits)
        if "fit" in groups:
            out["fit"] = {"seed": self.seed, "train_episodes": self.train_episodes, "val_episodes": self.val_episodes}
        if "heldout" in groups:
            out["heldout"] = {"seed": self.eval_seed, "episodes": self.heldout_episodes}
        return out

    def dataset_name(self, env: EnvConfig) -> str:
        """Directory name of the dataset with every split: readable settings and a hash of all of them."""
        return self.name or (
            f"{env.name}-{self.policy.name}-{env.image_size}px"
            f"-{self.train_episodes}x{env.episode_steps}-s{self.seed}-{config_hash(self.identity(env))}"
        )

    def heldout_dataset_name(self, env: EnvConfig) -> str:
        """Directory name of a dataset with only the held-out split (what planning needs)."""
        return (f"{env.name}-{self.policy.name}-{env.image_size}px"
                f"-heldout{self.heldout_episodes}x{env.episode_steps}-e{self.eval_seed}"
                f"-{config_hash(self.identity(env, ('heldout',)))}")


class DataSource(Protocol):
    """What a dataset is read for: any stage config, with its env and data parts."""

    env: EnvConfig
    data: DataConfig


@dataclass
class CollectConfig:
    """``collect.py``'s settings: an env and a dataset of it.

    Attributes:
        env: the environment and its rendering.
        data: the dataset.
        progress: show progress bars.
    """

    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    progress: bool = True

    def identity(self, splits: tuple[str, ...] = SPLITS) -> dict:
        """``data.identity(env, splits)``."""
        return self.data.identity(self.env, splits)

    @property
    def dataset_name(self) -> str:
        """``data.dataset_name(env)``: the directory name of this dataset."""
        return self.data.dataset_name(self.env)

    @property
    def heldout_dataset_name(self) -> str:
        """``data.heldout_dataset_name(env)``: the name of a dataset of its held-out split alone."""
        return self.data.heldout_dataset_name(self.env)
