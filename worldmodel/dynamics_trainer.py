"""The predictor's training run: checkpoints, exact resume, logs, DDP.

Like JEPA pretraining, every rank draws the same global batch and trains on its
slice. A checkpoint holds the whole world model (frozen encoder, latent statistics,
predictor), so it is all that planning needs.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from worldmodel.checkpoint import load_config, load_weights, restore_run, save_run
from worldmodel.dynamics import DynamicsTrainConfig, WindowBatches, dynamics_losses, evaluate
from worldmodel.encoder import EncoderConfig, ViTEncoder
from worldmodel.jepa import ema_update
from worldmodel.pretrain import RepresentationCollapse, distributed, lr_at, resolve_device, write_csv
from worldmodel.world_model import DynamicsConfig, LatentWorldModel

MIN_LATENT_STD = 1e-2  # below this the trained head's latents no longer tell frames apart


def world_model_config(model: LatentWorldModel) -> dict:
    """What ``load_world_model`` needs to rebuild ``model``."""
    encoder = model.encoder.cfg.to_dict() if model.encoder is not None else None
    return {"encoder": encoder, "dynamics": model.cfg.to_dict(), "action_dim": model.action_dim,
            "image_shape": list(model.image_shape)}


def load_world_model(path: str | Path, device: str | torch.device = "cpu") -> LatentWorldModel:
    """Rebuild a world model from a checkpoint directory."""
    cfg = load_config(path)
    try:
        encoder = ViTEncoder(EncoderConfig(**cfg["encoder"])) if cfg["encoder"] is not None else None
        model = LatentWorldModel(encoder, DynamicsConfig(**cfg["dynamics"]), cfg["action_dim"], cfg.get("image_shape"))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}/config.json does not describe a world model: {err}") from None
    model.load_state_dict(load_weights(path))
    return model.to(device).eval()


class DynamicsTrainer:
    """Owns the world model, optimiser, window draw and history of one run."""

    def __init__(self, model: LatentWorldModel, cfg: DynamicsTrainConfig, train: WindowBatches, val: WindowBatches,
                 out_dir: str | Path, meta: dict):
        self.cfg, self.out_dir, self.meta = cfg, Path(out_dir), meta
        self.rank, self.world = distributed()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} processes")
        self.device = resolve_device(cfg.device, self.rank)
        self.model = model.to(self.device)
        self.train_batches, self.val_batches = train, val
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.history = 0, []

    def train_step(self) -> dict:
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        s, a = self.train_batches.sample(cfg.batch_size, self.gen)
        part = slice(self.rank * cfg.batch_size // self.world, (self.rank + 1) * cfg.batch_size // self.world)
        s, a = s[part].to(self.device), a[part].to(self.device)
        terms = dynamics_losses(self.model, s, a)
        weights = {"one_step": 1.0, "rollout": cfg.rollout_weight, "vc": cfg.vc_weight, "inverse": cfg.inverse_weight}
        loss = sum(weights[k] * v for k, v in terms.items())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite dynamics loss {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:  # average the slices' gradients: the same update as one process on the batch
            for p in self.params:
                dist.all_reduce(p.grad)
                p.grad /= self.world
        self.optimizer.step()
        ema_update(self.model.target_head, self.model.head, cfg.ema)
        self.step += 1
        return {"loss": loss.item(), "lr": lr, **{k: v.item() for k, v in terms.items()}}

    def run(self, until: int | None = None) -> list[dict]:
        cfg = self.cfg
        last = cfg.steps if until is None else min(until, cfg.steps)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="dynamics", disable=not cfg.progress or self.rank != 0)
        start = time.perf_counter()
        while self.step < last:
            row = self.train_step()
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                val = evaluate(self.model, self.val_batches)
                row.update(step=self.step, val_one_step=val["one_step"], val_rollout=val["rollout"],
                           val_latent_std=val["latent_std"], seconds=time.perf_counter() - start)
                self.history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", val_rollout=f"{val['rollout']:.4f}")
                if self.rank == 0:
                    write_csv(self.out_dir / "log.csv", self.history)
                    self.save()
                if self.model.cfg.latent_dim and val["latent_std"] < MIN_LATENT_STD:
                    raise RepresentationCollapse(
                        f"the head's latents collapsed at step {self.step}: mean per-dimension std "
                        f"{val['latent_std']:.2e} < {MIN_LATENT_STD} (raise train.vc_weight)"
                    )
        bar.close()
        return self.history

    def save(self) -> None:
        config = {**world_model_config(self.model), "train": asdict(self.cfg), "step": self.step, **self.meta}
        state = {"step": self.step, "history": self.history}
        save_run(self.out_dir / "checkpoint", config, self.model, self.optimizer, {"windows": self.gen}, state)

    def resume(self) -> bool:
        path = self.out_dir / "checkpoint"
        if not path.exists():
            return False
        state = restore_run(path, self.model, self.optimizer, {"windows": self.gen})
        self.step, self.history = state["step"], state["history"]
        return True
