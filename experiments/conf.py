"""Typed config schemas for the entry points, registered with Hydra's ConfigStore.

Every YAML file under ``configs/`` extends one of these schemas, so a key that no
dataclass declares (a typo in a file or on the command line) is an error.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, TypeVar

import hydra

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from envs.config import EnvConfig, PointMazeConfig
from worldmodel.data.config import CollectConfig, PolicyConfig
from experiments.schemas import (DistillExperimentConfig, DynamicsExperimentConfig, PlanConfig, PretrainConfig,
                                 ProbeConfig,
                                 ReachExperimentConfig, SlowExperimentConfig)

CONFIG_DIR = str(Path(__file__).parent / "configs")
T = TypeVar("T")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="collect_schema", node=CollectConfig)
    cs.store(name="plan_schema", node=PlanConfig)
    cs.store(name="pretrain_schema", node=PretrainConfig)
    cs.store(name="dynamics_schema", node=DynamicsExperimentConfig)
    cs.store(name="probe_schema", node=ProbeConfig)
    cs.store(name="slow_schema", node=SlowExperimentConfig)
    cs.store(name="distill_schema", node=DistillExperimentConfig)
    cs.store(name="reach_schema", node=ReachExperimentConfig)
    cs.store(group="env", name="env_schema", node=EnvConfig)
    cs.store(group="env", name="pointmaze_schema", node=PointMazeConfig)
    cs.store(group="policy", name="policy_schema", node=PolicyConfig)


def to_object(cfg: DictConfig) -> T:
    """The typed dataclass behind a composed config (runs each ``__post_init__`` check)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def load(config_name: str, overrides: list[str] | None = None):
    """Compose ``config_name`` with command-line style overrides, as the entry points do."""
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    return to_object(cfg)


register_configs()


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """``hydra.main`` on ``configs/<config_name>.yaml`` for an entry point's ``main(cfg)``; the command line
    also takes ``--resume``, read as ``resume=true`` (the one place that rewrite lives)."""
    def wrap(main: Callable[[DictConfig], None]) -> Callable[[], None]:
        composed = hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")(main)

        @functools.wraps(main)
        def run() -> None:
            sys.argv = ["resume=true" if a == "--resume" else a for a in sys.argv]
            composed()
        return run
    return wrap
