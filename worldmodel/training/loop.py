"""The training loop every run uses: JEPA pretraining and latent dynamics alike.

What is trained is an :class:`Objective`: it owns the model, its optimiser's parameter
groups, its random generators, and a step function ``loss(model, batch)``. The loop
owns everything else, once: learning-rate and weight-decay schedules, bf16 autocast
and ``torch.compile`` on CUDA, data-parallel gradient averaging, gradient clipping,
log rows, checkpoints with exact resumption, and the progress bar.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from worldmodel.checkpoint import CheckpointError, restore_run, save_run
from worldmodel.training.distributed import average_gradients, check_device_name, distributed, resolve_device
from worldmodel.training.logs import write_csv
from worldmodel.training.schedules import lr_at, weight_decay_at


LOGGERS = ("csv", "tensorboard")


@dataclass
class OptimConfig:
    """Optimisation settings every run shares (objectives extend them).

    Attributes:
        steps: optimiser steps in the whole run (schedules span them).
        batch_size: samples per step, over all processes.
        lr: peak learning rate, reached after ``warmup_steps`` (linear warm-up, then cosine).
        min_lr: learning rate at the end of the cosine decay.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay at step 0.
        weight_decay_end: weight decay at the last step (cosine schedule); ``None``: constant.
        grad_clip: maximum global gradient norm (0 = no clipping).
        seed: seed of the initial weights and of every random draw of the run.
        log_every: steps between log rows.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: bf16 autocast on CUDA.
        compile: ``torch.compile`` the step's loss function on CUDA.
        progress: show a progress bar.
        logger: where log rows go besides ``log.csv`` (always written): ``csv`` (nowhere else) or
            ``tensorboard`` (event files in ``<out_dir>/tensorboard``; ``pip install -e ".[tensorboard]"``).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.0
    weight_decay_end: float | None = None
    grad_clip: float = 0.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    device: str = "auto"
    amp: bool = True
    compile: bool = True
    progress: bool = True
    logger: str = "csv"

    def __post_init__(self):
        if self.weight_decay_end is None:
            self.weight_decay_end = self.weight_decay
        if min(self.steps, self.batch_size, self.log_every, self.checkpoint_every) < 1:
            raise ValueError(f"steps, batch_size, log_every and checkpoint_every must be >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.log_every}, {self.checkpoint_every}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.weight_decay_end < 0 or self.grad_clip < 0:
            raise ValueError(f"warmup_steps, weight decays and grad_clip must be >= 0, got {self}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be >= 0 and < 2**63 (a torch seed), got {self.seed}")
        check_device_name(self.device)
        if self.logger not in LOGGERS:
            raise ValueError(f"logger must be one of {LOGGERS}, got {self.logger!r}")


class Objective(Protocol):
    """What a run trains. ``loss`` is the step function; the rest are hooks of the loop."""

    model: nn.Module  # everything that is trained and checkpointed
    generators: dict[str, torch.Generator]  # every random draw of the run (checkpointed)

    def optimizer(self) -> torch.optim.Optimizer: ...

    def batch(self, rank: int, world: int, device: torch.device) -> Any:
        """This rank's slice of the next global batch, on ``device``."""

    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """``loss`` (minimised) and named scalar terms (logged); other entries are passed to ``log``."""

    def after_step(self, step: int) -> dict[str, float]:
        """After the optimiser step ``step`` (EMA updates); returns values to log."""

    def log(self, step: int, out: dict[str, torch.Tensor]) -> dict[str, float]:
        """Extra values for a log row (validation, collapse statistics)."""

    def check(self, step: int, row: dict) -> None:
        """After the log row is written: raise ``RepresentationCollapse`` if training must stop."""

    def config(self) -> dict:
        """What rebuilds the model (written to the checkpoint's ``config.json``)."""

    def state(self) -> dict:
        """JSON-able objective state to resume."""

    def restore(self, state: dict) -> None: ...


class Trainer:
    """Trains an objective for ``cfg.steps`` steps; logs to ``out_dir/log.csv``, checkpoints to
    ``out_dir/checkpoint`` (resumed exactly by :meth:`resume`)."""

    def __init__(self, objective: Objective, cfg: OptimConfig, out_dir: str | Path, meta: dict | None = None):
        self.objective, self.cfg, self.out_dir, self.meta = objective, cfg, Path(out_dir), dict(meta or {})
        self.rank, self.world = distributed()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} processes")
        self.device = resolve_device(cfg.device, self.rank)
        self.model = objective.model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = objective.optimizer()
        self.cuda = self.device.type == "cuda"
        self.loss_fn = torch.compile(objective.loss) if self.cuda and cfg.compile else objective.loss
        self.step, self.log_rows = 0, []
        self.events = tensorboard_writer(self.out_dir) if cfg.logger == "tensorboard" and self.rank == 0 else None

    def train_step(self) -> dict:
        """One optimiser step; returns the step's scalars (averaged over ranks) and the objective's extras."""
        cfg, step = self.cfg, self.step
        lr, wd = lr_at(step, cfg), weight_decay_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group.get("decay", True):
                group["weight_decay"] = wd
        batch = self.objective.batch(self.rank, self.world, self.device)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda and cfg.amp else nullcontext()
        with amp:
            out = self.loss_fn(self.model, batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.params, self.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip or float("inf"))
        self.optimizer.step()
        extra = self.objective.after_step(step)
        self.step += 1
        names = [k for k, v in out.items() if v.ndim == 0]
        scalars = torch.stack([out[k].detach().float() for k in names])
        if self.world > 1:  # log the whole batch's terms, not this rank's slice
            dist.all_reduce(scalars)
            scalars /= self.world
        row = dict(zip(names, scalars.tolist()))
        return {**row, "lr": lr, "wd": wd, "grad_norm": float(grad_norm), **extra,
                "_out": {k: v for k, v in out.items() if k not in names}}

    def run(self, until: int | None = None) -> list[dict]:
        """Train to the last step (or stop after step ``until``, e.g. to test resumption)."""
        cfg = self.cfg
        last = cfg.steps if until is None else min(until, cfg.steps)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=type(self.objective).__name__,
                   disable=not cfg.progress or self.rank != 0)
        start = time.perf_counter()
        while self.step < last:
            row = self.train_step()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.log(row, time.perf_counter() - start)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        bar.close()
        if self.events is not None:
            self.events.flush()
        return self.log_rows

    def log(self, row: dict, elapsed: float) -> None:
        """Append a log row (written to ``log.csv``), then let the objective stop a collapsed run."""
        out = row.pop("_out")
        self.log_rows.append({"step": self.step, **row, **self.objective.log(self.step, out), "seconds": elapsed})
        if self.rank == 0:
            write_csv(self.out_dir / "log.csv", self.log_rows)
        if self.events is not None:
            for key, value in self.log_rows[-1].items():
                if key != "step" and isinstance(value, (int, float)):
                    self.events.add_scalar(key, value, self.step)
            self.events.flush()
        self.objective.check(self.step, self.log_rows[-1])

    def save(self) -> None:
        """Checkpoint the model, optimiser, generators and log (rank 0 writes)."""
        if self.rank != 0:
            return
        config = {**self.objective.config(), "train": asdict(self.cfg), "step": self.step, **self.meta}
        state = {"step": self.step, "log": self.log_rows, "objective": self.objective.state()}
        save_run(self.out_dir / "checkpoint", config, self.model, self.optimizer, self.objective.generators, state,
                 global_rng=global_rng_state(self.device))

    def resume(self) -> bool:
        """Continue from ``out_dir/checkpoint`` when it exists; True if resumed."""
        path = self.out_dir / "checkpoint"
        if not path.exists():
            return False
        state, global_rng = restore_run(path, self.model, self.optimizer, self.objective.generators)
        if "log" not in state:
            raise CheckpointError(f"{path} was written by an older training loop (its state has {sorted(state)}); "
                                  "it cannot be resumed: start a new run in another out_dir")
        self.step, self.log_rows = state["step"], state["log"]
        self.objective.restore(state["objective"])
        set_global_rng_state(global_rng, self.device)
        return True


def tensorboard_writer(out_dir: Path):
    """A TensorBoard ``SummaryWriter`` on ``out_dir/tensorboard``; a clear error without the package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("train.logger=tensorboard needs the tensorboard package: pip install -e \".[tensorboard]\" "
                          "(log.csv is written either way)") from None
    return SummaryWriter(str(out_dir / "tensorboard"))


def global_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global torch generators (dropout draws from them): the CPU's and, on CUDA, the device's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
