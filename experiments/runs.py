"""What every training entry point does before it trains: lock and check the run directory,
fail on a missing GPU, and open (collecting once, on rank 0) the dataset it trains on."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterator

from worldmodel.data import Dataset, load_dataset
from worldmodel.training import RunDirectory, distributed, rank_zero_first, resolve_device


@contextmanager
def training_run(cfg) -> Iterator[Dataset]:
    """The dataset of ``cfg`` (a ``PretrainConfig`` or ``DynamicsExperimentConfig``), opened inside its
    locked run directory ``cfg.out_dir``; resuming checks the run's settings and data (``RunDirectory``)."""
    with RunDirectory(cfg.out_dir, asdict(cfg), cfg.resume, cfg.resume_allow) as rundir:
        rank, _ = distributed()
        resolve_device(cfg.train.device, rank)  # a missing GPU fails here, before any collection
        with rank_zero_first():  # under torchrun: rank 0 collects what is missing, the other ranks then read it
            dataset = load_dataset(cfg)
        rundir.check_dataset(dataset.manifest["checksum"])
        yield dataset
