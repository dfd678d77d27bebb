"""Training: one loop (:class:`Trainer`) for every objective, its schedules, data parallelism and collapse guards."""

from worldmodel.training.collapse import RepresentationCollapse, embedding_stats, variance_covariance
from worldmodel.training.distributed import (current_rank, distributed, rank_zero_first, resolve_device,
                                             shutdown_distributed)
from worldmodel.training.logs import plot_log, write_csv
from worldmodel.training.loop import Objective, OptimConfig, Trainer
from worldmodel.training.rundir import RunConfigChanged, RunDirectory
from worldmodel.training.schedules import ema_momentum, ema_update, lr_at, weight_decay_at

__all__ = [
    "Objective",
    "OptimConfig",
    "RepresentationCollapse",
    "RunConfigChanged",
    "RunDirectory",
    "Trainer",
    "current_rank",
    "distributed",
    "ema_momentum",
    "ema_update",
    "embedding_stats",
    "lr_at",
    "plot_log",
    "rank_zero_first",
    "resolve_device",
    "shutdown_distributed",
    "variance_covariance",
    "weight_decay_at",
    "write_csv",
]
