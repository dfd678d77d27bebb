"""What every training entry point does before it trains: lock and check the run directory,
fail on a missing GPU, and open (collecting once, on rank 0) the dataset it trains on; and what
every entry point that loads a checkpoint checks first: the env it was trained on."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterator

from envs import EnvConfig
from worldmodel.checkpoint import load_config
from worldmodel.data import Dataset, load_dataset
from worldmodel.training import RunDirectory, distributed, rank_zero_first, resolve_device


@contextmanager
def training_run(cfg, parts: tuple[str, ...] = ("",), upstream: dict[str, str] | None = None) -> Iterator[Dataset]:
    """The dataset of ``cfg`` (a ``PretrainConfig`` or ``DynamicsExperimentConfig``), opened inside its
    locked run directory ``cfg.out_dir``; resuming checks the run's settings, the checkpoints it reads
    (``upstream``: config key -> weights sha256, see ``RunDirectory.check_upstream``) and its data
    (``RunDirectory``; ``parts``: where under ``out_dir`` a run of several stages keeps its checkpoints)."""
    with RunDirectory(cfg.out_dir, asdict(cfg), cfg.resume, cfg.resume_allow, parts) as rundir:
        rundir.check_upstream(upstream or {})
        rank, _ = distributed()
        resolve_device(cfg.train.device, rank)  # a missing GPU fails here, before any collection
        with rank_zero_first():  # under torchrun: rank 0 collects what is missing, the other ranks then read it
            dataset = load_dataset(cfg, progress=cfg.train.progress)
        rundir.check_dataset(dataset.manifest["checksum"])
        yield dataset


def check_trained_env(env: EnvConfig, path: str, what: str = "model") -> dict:
    """The ``config.json`` of checkpoint ``path`` (a world model or a slow level), refused where it was
    trained on another env than ``env``, or on this env with other settings (``antialias`` aside)."""
    trained = load_config(path)
    if trained.get("env", env.name) != env.name:
        raise ValueError(f"{what} {path} was trained on env {trained['env']!r}, not {env.name!r}; pass "
                         f"model=models/{env.model_name} or another model trained on it")
    wanted = env.env_kwargs()
    recorded = trained.get("env_kwargs")
    if recorded is None:  # a model that does not say what it was trained on cannot be checked against the env
        print(f"warning: {what} {path} records no env_kwargs (the env settings it was trained on); it is not "
              f"checked against env={env.name} {wanted}", file=sys.stderr)
        return trained
    differ = {k: (recorded.get(k), wanted.get(k)) for k in {*recorded, *wanted}
              if k != "antialias" and recorded.get(k) != wanted.get(k)}
    if differ:
        raise ValueError(f"{what} {path} was trained on {env.name} with other settings: "
                         + ", ".join(f"env.{k}={a!r} (asked: {b!r})" for k, (a, b) in differ.items()))
    return trained
