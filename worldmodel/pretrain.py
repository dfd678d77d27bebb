"""JEPA pretraining loop: schedules, EMA, collapse monitor, checkpoints, DDP.

Runs unchanged under ``torchrun``: every rank draws the same global batch of frames
and masks from generators seeded identically, and trains on its slice of it, so a
run on R processes computes the same averaged gradient as one process on the whole
batch.
"""

from __future__ import annotations

import csv
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from worldmodel.checkpoint import restore_run, save_run
from worldmodel.data.episodes import Episodes
from worldmodel.data.windows import WindowSampler
from worldmodel.jepa import JEPA, JEPAConfig, ema_momentum, ema_update, embedding_stats
from worldmodel.masks import sample_masks


class RepresentationCollapse(RuntimeError):
    """The target embeddings stopped varying across images."""


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes:
        steps: optimiser steps in the whole run (schedules span them).
        batch_size: images per step, over all processes.
        lr: peak learning rate, reached after ``warmup_steps`` (linear warm-up).
        min_lr: learning rate at the end of the cosine decay.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay at step 0 (cosine schedule to ``weight_decay_end``).
        weight_decay_end: weight decay at the last step.
        grad_clip: maximum global gradient norm (0 = no clipping).
        seed: seed of the initial weights, the frame draw and the masks.
        log_every: steps between log rows (and collapse checks).
        checkpoint_every: steps between checkpoints (one is always written at the end).
        collapse_std: the monitor's threshold on the mean per-dimension std of target embeddings.
        collapse_patience: consecutive low-std checks that stop training.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: bf16 autocast on CUDA.
        compile: ``torch.compile`` the model on CUDA.
        progress: show a progress bar.
    """

    steps: int = 3000
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    collapse_std: float = 1e-3
    collapse_patience: int = 5
    device: str = "auto"
    amp: bool = True
    compile: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"steps, batch_size, log_every, checkpoint_every must be >= 1, got "
                f"{self.steps}, {self.batch_size}, {self.log_every}, {self.checkpoint_every}"
            )
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got {self.min_lr}, {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine decay to ``cfg.min_lr``
    at ``cfg.steps`` (any config with those fields: pretraining's and the predictor's)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def weight_decay_at(step: int, cfg: TrainConfig) -> float:
    """Cosine schedule from ``weight_decay`` to ``weight_decay_end``."""
    progress = min(1.0, step / max(1, cfg.steps))
    return cfg.weight_decay_end + (cfg.weight_decay - cfg.weight_decay_end) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: JEPA) -> torch.optim.AdamW:
    """AdamW; biases and norm gains (1-d parameters) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95))


def distributed() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def shutdown_distributed() -> None:
    """Wait for every rank, then close the process group (a live gloo group aborts at exit)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_device(name: str, rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


class Trainer:
    """Owns the model, optimiser, generators and history of one pretraining run."""

    def __init__(self, model_cfg: JEPAConfig, cfg: TrainConfig, train: Episodes, out_dir: str | Path, meta: dict):
        self.model_cfg, self.cfg, self.out_dir, self.meta = model_cfg, cfg, Path(out_dir), meta
        self.rank, self.world = distributed()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} processes")
        self.device = resolve_device(cfg.device, self.rank)
        torch.manual_seed(cfg.seed)
        self.model = JEPA(model_cfg).to(self.device)
        self.optimizer = make_optimizer(self.model)
        self.sampler = WindowSampler(train, window=1)
        self.data_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.mask_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.generators = {"data": self.data_gen, "mask": self.mask_gen}
        self.step, self.history, self.low_std_checks = 0, [], 0
        self.forward = self.model
        if self.world > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=False)
        self.cuda = self.device.type == "cuda"
        if self.cuda and cfg.compile:
            self.forward = torch.compile(self.forward)

    # --- one step ------------------------------------------------------------
    def batch(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """This rank's slice of the global batch: images, context and target indices."""
        B = self.cfg.batch_size
        index = torch.randint(len(self.sampler), (B,), generator=self.data_gen).numpy()
        ctx, tgt = sample_masks(self.mask_gen, B, self.model_cfg.encoder.grid, self.model_cfg.masks)
        part = slice(self.rank * B // self.world, (self.rank + 1) * B // self.world)
        images = self.sampler.get(index[part]).obs[:, 0]
        return images.to(self.device), ctx[part].to(self.device), [t[part].to(self.device) for t in tgt]

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        lr, wd = lr_at(step, cfg), weight_decay_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["decay"]:
                group["weight_decay"] = wd
        images, ctx, tgt = self.batch()
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda and cfg.amp else nullcontext()
        with amp:
            out = self.forward(images, ctx, tgt)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        self.optimizer.step()
        tau = ema_momentum(step, cfg.steps, self.model_cfg.ema_start, self.model_cfg.ema_end)
        if self.model.target_encoder is not None:
            ema_update(self.model.target_encoder, self.model.encoder, tau)
        self.step += 1
        terms = torch.stack([loss.detach(), out["jepa"].detach(), out["vc"].detach()]).float()
        if self.world > 1:  # log the whole batch's loss, not this rank's slice
            dist.all_reduce(terms)
            terms /= self.world
        loss_v, jepa_v, vc_v = terms.tolist()
        return {"loss": loss_v, "jepa": jepa_v, "vc": vc_v, "lr": lr, "wd": wd, "tau": tau,
                "grad_norm": float(grad_norm), "pooled": out["pooled"]}

    # --- the run ---------------------------------------------------------------
    def run(self, until: int | None = None) -> list[dict]:
        """Train to the last step (or stop after step ``until``, e.g. to test resumption)."""
        cfg = self.cfg
        last = cfg.steps if until is None else min(until, cfg.steps)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="pretrain", disable=not cfg.progress or self.rank != 0)
        start = time.perf_counter()
        while self.step < last:
            out = self.train_step()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.log(out, time.perf_counter() - start)
                bar.set_postfix(loss=f"{out['loss']:.4f}", std=f"{self.history[-1]['emb_std']:.3f}")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        bar.close()
        return self.history

    def log(self, out: dict, elapsed: float) -> None:
        stats = embedding_stats(out.pop("pooled"))
        row = {"step": self.step, **out, "emb_std": stats["std"], "eff_rank": stats["effective_rank"],
               "seconds": elapsed}
        self.history.append(row)
        if self.rank == 0:
            write_csv(self.out_dir / "log.csv", self.history)
        self.low_std_checks = self.low_std_checks + 1 if stats["std"] < self.cfg.collapse_std else 0
        if self.low_std_checks >= self.cfg.collapse_patience:
            raise RepresentationCollapse(
                f"representations collapsed at step {self.step}: the target embeddings' mean per-dimension std "
                f"is {stats['std']:.2e} (< {self.cfg.collapse_std}) for {self.low_std_checks} checks in a row; "
                f"effective rank {stats['effective_rank']:.2f}"
            )

    # --- checkpoints -----------------------------------------------------------
    def save(self) -> None:
        if self.rank != 0:
            return
        config = {"model": self.model_cfg.to_dict(), "train": asdict(self.cfg), "step": self.step, **self.meta}
        state = {"step": self.step, "history": self.history, "low_std_checks": self.low_std_checks}
        save_run(self.out_dir / "checkpoint", config, self.model, self.optimizer, self.generators, state)

    def resume(self) -> bool:
        """Continue from ``out_dir/checkpoint`` when it exists; True if resumed."""
        path = self.out_dir / "checkpoint"
        if not path.exists():
            return False
        state = restore_run(path, self.model, self.optimizer, self.generators)
        self.step, self.history, self.low_std_checks = state["step"], state["history"], state["low_std_checks"]
        return True


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_history(rows: list[dict], path: Path) -> None:
    """Loss, embedding std and effective rank against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key, title in zip(axes, ("jepa", "emb_std", "eff_rank"), ("JEPA loss", "target emb. std", "effective rank")):
        ax.plot(steps, [r[key] for r in rows])
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
