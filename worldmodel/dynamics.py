"""Training the action-conditioned predictor (and a trained encoder or head).

A frozen encoder's features are computed once per frame (``encode_frames``); a conv
encoder trained end to end reads the frames themselves. Training windows are read from
that table: a window of ``R`` model steps spans ``(R + h - 1) * k + 1`` frames (``k`` env
steps per action block, ``h`` block-boundary latents per state), of which the block
boundaries are used. Two named loss terms on the predicted newest latent:

- ``one_step``: teacher forcing, ``g(s_t, A_t)`` against ``z_{t+k}``;
- ``rollout``: ``R`` steps open loop from ``s_0``, against every true latent;

with a trained head or encoder, ``vc``: a variance-covariance term on its online
latents (the collapse guard); and optionally ``inverse``: the action block ``A_t``
regressed from the state ``s_t`` and the next latent ``z_{t+k}`` (PLDM's inverse-dynamics
term). Targets are the EMA head's (or EMA encoder's) latents, so no gradient reaches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from worldmodel.data.episodes import Episodes
from worldmodel.data.windows import WindowSampler
from worldmodel.jepa import variance_covariance
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
        vc_weight: weight of the variance-covariance term (with a trained head).
        inverse_weight: weight of the inverse-dynamics term (with ``DynamicsConfig.inverse``).
        ema: momentum of the target head's exponential moving average.
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
    vc_weight: float = 1.0
    inverse_weight: float = 1.0
    ema: float = 0.99
    seed: int = 0
    log_every: int = 50
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.rollout_steps, self.log_every) < 1:
            raise ValueError(f"steps, batch_size, rollout_steps and log_every must be >= 1, got {self}")
        if not 0 <= self.ema < 1 or self.vc_weight < 0:
            raise ValueError(f"need 0 <= ema < 1 and vc_weight >= 0, got {self.ema}, {self.vc_weight}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got {self.min_lr}, {self.lr}")


@torch.no_grad()
def fit_projection(model: LatentWorldModel, episodes: Episodes, frames: int = 6000, seed: int = 0) -> None:
    """Fit the model's principal-component projection on random frames of ``episodes``."""
    if not model.frozen or not model.cfg.project_dim:
        return
    device = model.device
    rows = np.sort(np.random.default_rng(seed).choice(len(episodes.obs), min(frames, len(episodes.obs)), False))
    pooled = torch.cat([
        model.pooled(torch.from_numpy(np.array(episodes.obs[rows[i : i + 256]])).permute(0, 3, 1, 2).to(device)).cpu()
        for i in range(0, len(rows), 256)
    ])
    model.fit_projection(pooled.to(device))


@torch.no_grad()
def encode_frames(model: LatentWorldModel, episodes: Episodes, batch: int = 256, progress: bool = True) -> torch.Tensor:
    """Raw (unstandardised) features of every frame of ``episodes``: ``(F, feature_dim)`` float32
    (with the conv encoder: the frames themselves, ``(F, C, H, W)`` uint8)."""
    if not model.frozen:
        return torch.from_numpy(np.array(episodes.obs)).permute(0, 3, 1, 2).contiguous()
    device = model.device
    out = torch.empty(len(episodes.obs), model.feature_dim)
    for i in tqdm(range(0, len(out), batch), desc="encode frames", disable=not progress):
        obs = torch.from_numpy(np.array(episodes.obs[i : i + batch])).permute(0, 3, 1, 2).to(device)
        out[i : i + batch] = model.raw_latent(obs).float().cpu()
    return out


def dynamics_losses(model: LatentWorldModel, features: torch.Tensor, blocks: torch.Tensor,
                    target_latents: torch.Tensor | None = None) -> dict:
    """Loss terms of a batch: standardised block-boundary ``features (B, R+h, feature_dim)`` and the
    action ``blocks (B, R+h-1, block)`` between them; ``target_latents``: the EMA head's latents of
    ``features`` when the caller has them already."""
    h = model.history
    latents = model.embed(features)
    if target_latents is None:
        with torch.no_grad():
            target_latents = model.embed(features, target=True)
    targets = target_latents[:, h:].detach()
    states = model.window_states(latents, blocks)[:, :-1]  # (B, R, state_dim)
    one_step = F.mse_loss(model.newest(model.predict(states, blocks[:, h - 1 :])), targets)
    rollout = F.mse_loss(model.newest(model.rollout(states[:, 0], blocks[:, h - 1 :])), targets)
    vc = variance_covariance(latents.reshape(-1, model.frame_dim)) if model.cfg.latent_dim else one_step.new_zeros(())
    terms = {"one_step": one_step, "rollout": rollout, "vc": vc}
    if model.cfg.inverse:  # the action block A_t from the state s_t (it holds the velocity) and z_{t+k}
        terms["inverse"] = F.mse_loss(model.inverse(torch.cat([states, latents[:, h:]], -1)), blocks[:, h - 1 :])
    return terms


class WindowBatches:
    """Standardised features at block boundaries and the action blocks between them, drawn
    from a table of frame features.

    A window holds the ``R + h`` block-boundary frames ``0, k, 2k, ...`` of ``(R + h - 1) * k + 1``
    consecutive frames, and the ``R + h - 1`` blocks of ``k`` actions between them.
    """

    def __init__(self, model: LatentWorldModel, episodes: Episodes, raw_latents: torch.Tensor, rollout_steps: int):
        k, h = model.cfg.action_block, model.history
        self.k, self.h, self.R = k, h, rollout_steps
        self.sampler = WindowSampler(episodes, window=(rollout_steps + h - 1) * k + 1)
        self.latents = model.standardise(raw_latents)
        self.actions = torch.from_numpy(np.array(episodes.actions, dtype=np.float32))
        self.boundaries = np.arange(rollout_steps + h) * k  # window frames at block boundaries

    def get(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        frames, steps = self.sampler.rows(index)
        x = self.latents[torch.from_numpy(frames[:, self.boundaries])]  # (B, R+h, d)
        a = self.actions[torch.from_numpy(steps)]  # (B, (R+h-1)*k, A)
        return x, a.reshape(len(index), self.R + self.h - 1, -1)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get(torch.randint(len(self.sampler), (batch,), generator=generator).numpy())


@torch.no_grad()
def evaluate(model: LatentWorldModel, batches: WindowBatches, n: int = 1024, seed: int = 0) -> dict:
    """Mean loss terms on ``n`` fixed windows, the rollout error per horizon, and the
    target latents' mean per-dimension std (a collapse shows as ~0)."""
    model.eval()
    x, a = batches.sample(n, torch.Generator().manual_seed(seed))
    x, a = x.to(model.device), a.to(model.device)
    z, h = model.embed(x, target=True), model.history
    terms = {k: v.item() for k, v in dynamics_losses(model, x, a, z).items()}
    s0 = model.window_states(z, a)[:, 0]
    per_h = ((model.newest(model.rollout(s0, a[:, h - 1 :])) - z[:, h:]) ** 2).mean((0, 2))
    latent_std = z.reshape(-1, model.frame_dim).std(0).mean().item()
    model.train()
    return {**terms, "rollout_mse_by_horizon": per_h.tolist(), "latent_std": latent_std}
