"""Typed config schemas for the entry points, registered with Hydra's ConfigStore, and the envs'
config files.

Every YAML file under ``configs/`` extends one of these schemas, so a key that no dataclass declares
(a typo in a file or on the command line) is an error. Each env's one config file
(``envs/<name>.yaml``, see ``envs.registry``) is read here into what an entry point composes for it:
``env=<name>`` selects its ``env:`` section (typed by its ``EnvSpec.config``), and the group
``env_stage`` adds its ``data:`` section and the section of the entry point being composed;
``preset=<name>-<preset>`` adds one of its ``presets:`` (the same sections, for another scale).
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

import envs
from envs.config import EnvConfig
from worldmodel.data.config import CollectConfig
from experiments.schemas import (DistillExperimentConfig, DynamicsExperimentConfig, PlanConfig,
                                 PolicyExperimentConfig, PretrainConfig, ProbeConfig, ReachExperimentConfig,
                                 SlowExperimentConfig)

CONFIG_DIR = str(Path(__file__).parent / "configs")
T = TypeVar("T")
SCHEMAS = {"collect": CollectConfig, "plan": PlanConfig, "pretrain": PretrainConfig,
           "train_dynamics": DynamicsExperimentConfig, "probe": ProbeConfig, "train_slow": SlowExperimentConfig,
           "distill_dynamics": DistillExperimentConfig, "train_reach": ReachExperimentConfig,
           "train_policy": PolicyExperimentConfig}  # config name -> schema
COMMON = ("env", "data")  # the env file's sections every entry point reads


def env_file(spec: envs.EnvSpec) -> DictConfig:
    """The config file of ``spec`` (empty where it has none), its sections checked."""
    path = spec.config_file
    if not path.exists():
        return OmegaConf.create({})
    cfg = OmegaConf.load(path)
    known = (*COMMON, *SCHEMAS, "presets")
    for sections, where in [(cfg, ""), *((p, f"presets.{name}.") for name, p in cfg.get("presets", {}).items())]:
        unknown = [k for k in sections if k not in known or (where and k == "presets")]
        if unknown:
            raise ValueError(f"{path}: unknown section {where}{unknown[0]!r}; expected env, data, presets or an "
                             f"entry point's name ({', '.join(SCHEMAS)})")
    return cfg


def stage_node(sections: DictConfig, config_name: str) -> DictConfig:
    """What ``sections`` (an env file, or one of its presets) set for the entry point ``config_name``: its
    ``data`` and that entry point's own section, at the config's root."""
    return OmegaConf.merge({"data": sections.get("data", {})}, sections.get(config_name, {}))


def register_configs(config_name: str | None = None) -> None:
    """Store the schemas, and every registered env's settings; with ``config_name``, also what each env's
    file (and each of its presets) sets for that entry point."""
    cs = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=schema)
    for name in envs.env_names():
        spec = envs.get_spec(name)
        file = env_file(spec)
        settings = OmegaConf.merge(OmegaConf.structured(spec.config or EnvConfig), file.get("env", {}), {"name": name})
        cs.store(group="env", name=name, node=settings)
        if config_name is not None:
            cs.store(group="env_stage", name=name, node=stage_node(file, config_name), package="_global_")
            for preset, sections in file.get("presets", {}).items():
                node = OmegaConf.merge({"env": sections.get("env", {})}, stage_node(sections, config_name))
                cs.store(group="preset", name=f"{name}-{preset}", node=node, package="_global_")


def to_object(cfg: DictConfig) -> T:
    """The typed dataclass behind a composed config (runs each ``__post_init__`` check)."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def load(config_name: str, overrides: list[str] | None = None):
    """Compose ``config_name`` with command-line style overrides, as the entry points do."""
    register_configs(config_name)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    return to_object(cfg)



def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """``hydra.main`` on ``configs/<config_name>.yaml`` for an entry point's ``main(cfg)``; the command line
    also takes ``--resume``, read as ``resume=true`` (the one place that rewrite lives)."""
    def wrap(main: Callable[[DictConfig], None]) -> Callable[[], None]:
        composed = hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")(main)

        @functools.wraps(main)
        def run() -> None:
            register_configs(config_name)
            sys.argv = ["resume=true" if a == "--resume" else a for a in sys.argv]
            composed()
        return run
    return wrap
