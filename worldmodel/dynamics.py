"""Training the action-conditioned predictor on frozen-encoder states.

The encoder is frozen, so every frame's latent is computed once (``encode_frames``)
and training windows are read from that table: a window of ``R`` model steps spans
``R * k + h`` frames (``k`` env steps per action block, ``h`` frames per state). Two named loss terms:

- ``one_step``: teacher forcing, ``g(s_t, a_t)`` against ``s_{t+k}``;
- ``rollout``: ``R`` steps open loop from ``s_0``, against every true state.

Targets are the frozen EMA target encoder's states, so no gradient reaches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from worldmodel.data.episodes import Episodes
from worldmodel.data.windows import WindowSampler
from worldmodel.world_model import LatentWorldModel


@dataclass
class DynamicsTrainConfig:
    """Optimisation of the predictor.

    Attributes:
        steps: optimiser steps.
        batch_size: windows per step.
        lr: peak learning rate (linear warm-up, cosine decay to ``min_lr``).
        min_lr: final learning rate.
        warmup_steps: warm-up steps.
        weight_decay: AdamW weight decay.
        rollout_steps: model steps R per training window.
        rollout_weight: weight of the rollout term (the one-step term has weight 1).
        seed: seed of initial weights and the window draw.
        log_every: steps between log rows.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show progress bars.
    """

    steps: int = 6000
    batch_size: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    rollout_steps: int = 5
    rollout_weight: float = 1.0
    seed: int = 0
    log_every: int = 50
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.rollout_steps, self.log_every) < 1:
            raise ValueError(f"steps, batch_size, rollout_steps and log_every must be >= 1, got {self}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got {self.min_lr}, {self.lr}")


@torch.no_grad()
def fit_projection(model: LatentWorldModel, episodes: Episodes, frames: int = 6000, seed: int = 0) -> None:
    """Fit the model's principal-component projection on random frames of ``episodes``."""
    if not model.cfg.project_dim:
        return
    device = model.latent_mean.device
    rows = np.sort(np.random.default_rng(seed).choice(len(episodes.obs), min(frames, len(episodes.obs)), False))
    pooled = torch.cat([
        model.pooled(torch.from_numpy(np.array(episodes.obs[rows[i : i + 256]])).permute(0, 3, 1, 2).to(device)).cpu()
        for i in range(0, len(rows), 256)
    ])
    model.fit_projection(pooled.to(device))


@torch.no_grad()
def encode_frames(model: LatentWorldModel, episodes: Episodes, batch: int = 256, progress: bool = True) -> torch.Tensor:
    """Raw (unstandardised) latents of every frame of ``episodes``: ``(F, frame_dim)`` float32."""
    device = model.latent_mean.device
    out = torch.empty(len(episodes.obs), model.frame_dim)
    for i in tqdm(range(0, len(out), batch), desc="encode frames", disable=not progress):
        obs = torch.from_numpy(np.array(episodes.obs[i : i + batch])).permute(0, 3, 1, 2).to(device)
        out[i : i + batch] = model.raw_latent(obs).float().cpu()
    return out


def dynamics_losses(model: LatentWorldModel, states: torch.Tensor, actions: torch.Tensor) -> dict:
    """Loss terms of a batch: ``states (B, R+1, d)`` standardised, ``actions (B, R, block)``."""
    one_step = F.mse_loss(model.predict(states[:, :-1], actions), states[:, 1:])
    rollout = F.mse_loss(model.rollout(states[:, 0], actions), states[:, 1:])
    return {"one_step": one_step, "rollout": rollout}


class WindowBatches:
    """Standardised state windows and action blocks, drawn from a table of frame latents.

    State ``r`` of a window stacks frames ``r*k .. r*k + h - 1``; action block ``r`` is
    the ``k`` actions taken from its last frame.
    """

    def __init__(self, model: LatentWorldModel, episodes: Episodes, raw_latents: torch.Tensor, rollout_steps: int):
        k, h = model.cfg.action_block, model.history
        self.k, self.h, self.R = k, h, rollout_steps
        self.sampler = WindowSampler(episodes, window=rollout_steps * k + h)
        self.latents = (raw_latents - model.latent_mean.cpu()) / model.latent_std.cpu()
        self.actions = torch.from_numpy(np.array(episodes.actions, dtype=np.float32))
        self.state_frames = (np.arange(rollout_steps + 1) * k)[:, None] + np.arange(h)  # (R+1, h)

    def get(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        frames, steps = self.sampler.rows(index)  # (B, R*k + h), (B, R*k + h - 1)
        z = self.latents[torch.from_numpy(frames[:, self.state_frames])]  # (B, R+1, h, d)
        a = self.actions[torch.from_numpy(steps[:, self.h - 1 :])]  # (B, R*k, A)
        return z.flatten(2), a.reshape(len(index), self.R, -1)  # states; blocks of k actions

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get(torch.randint(len(self.sampler), (batch,), generator=generator).numpy())


@torch.no_grad()
def evaluate(model: LatentWorldModel, batches: WindowBatches, n: int = 1024, seed: int = 0) -> dict:
    """Mean loss terms on ``n`` fixed windows, and the rollout error per horizon."""
    model.eval()
    s, a = batches.sample(n, torch.Generator().manual_seed(seed))
    s, a = s.to(model.latent_mean.device), a.to(model.latent_mean.device)
    terms = {k: v.item() for k, v in dynamics_losses(model, s, a).items()}
    per_h = ((model.rollout(s[:, 0], a) - s[:, 1:]) ** 2).mean((0, 2))
    model.train()
    return {**terms, "rollout_mse_by_horizon": per_h.tolist()}
