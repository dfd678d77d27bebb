"""Training the world model as an objective of the training loop.

Windows of ``R`` model steps are read from a feature table of the frames (see
:class:`StateLayout` for the window arithmetic). Named loss terms on the predicted
newest latent, against the EMA head's latents (so no gradient reaches the targets):

- ``one_step``: teacher forcing, ``g(s_t, A_t)`` against ``z_{t+k}``;
- ``rollout``: ``R`` steps open loop from ``s_0``, against every true latent;
- ``vc``: with a trained head, a variance-covariance term on its online latents (the collapse guard);
- ``inverse`` (optional): the action block ``A_t`` regressed from ``s_t`` and ``z_{t+k}`` (PLDM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.data.episodes import Episodes
from worldmodel.data.windows import WindowSampler
from worldmodel.dynamics.model import WorldModel
from worldmodel.training.collapse import RepresentationCollapse, variance_covariance
from worldmodel.training.distributed import rank_slice
from worldmodel.training.loop import OptimConfig
from worldmodel.training.schedules import ema_update

MIN_LATENT_STD = 1e-2  # below this the trained head's latents no longer tell frames apart


@dataclass
class DynamicsTrainConfig(OptimConfig):
    """Optimisation of the world model (the :class:`OptimConfig` fields, with its own defaults).

    Attributes:
        rollout_steps: model steps R per training window.
        rollout_weight: weight of the rollout term (the one-step term has weight 1).
        vc_weight: weight of the variance-covariance term (with a trained head).
        inverse_weight: weight of the inverse-dynamics term (with ``DynamicsConfig.inverse``).
        ema: momentum of the target head's exponential moving average.
        val_windows: fixed validation windows scored at every log step.
    """

    steps: int = 6000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    log_every: int = 50
    rollout_steps: int = 5
    rollout_weight: float = 1.0
    vc_weight: float = 1.0
    inverse_weight: float = 1.0
    ema: float = 0.99
    val_windows: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if self.rollout_steps < 1 or self.val_windows < 1:
            raise ValueError(f"rollout_steps and val_windows must be >= 1, got {self.rollout_steps}, {self.val_windows}")
        if not 0 <= self.ema < 1 or min(self.vc_weight, self.rollout_weight, self.inverse_weight) < 0:
            raise ValueError(f"need 0 <= ema < 1 and loss weights >= 0, got ema={self.ema}, "
                             f"weights {self.rollout_weight}, {self.vc_weight}, {self.inverse_weight}")


class WindowBatches:
    """Windows of a split's feature table: the features at the ``R + h`` block boundaries of
    ``(R + h - 1) * k + 1`` consecutive frames, and the ``R + h - 1`` action blocks between them.

    Args:
        model: whose layout shapes the windows.
        episodes: the split.
        table: its feature table (``table[frame_index]`` -> features), from ``model.encoder.feature_table``.
        rollout_steps: model steps R per window.
    """

    def __init__(self, model: WorldModel, episodes: Episodes, table, rollout_steps: int):
        self.layout, self.R = model.layout, rollout_steps
        L, frames, longest = self.layout, self.layout.window_frames(rollout_steps), int(episodes.lengths.max()) + 1
        if rollout_steps < 1 or frames > longest:
            raise ValueError(f"windows of {rollout_steps} model steps span {frames} frames (history {L.history}, "
                             f"{L.action_block}-step action blocks), but the longest episode has {longest}: use 1 to "
                             f"{L.most_steps(longest)} model steps per window (train.rollout_steps, or train.horizon "
                             f"when distilling)")
        self.sampler = WindowSampler(episodes, window=frames)
        self.table = table
        self.actions = torch.from_numpy(np.array(episodes.actions, dtype=np.float32))
        self.boundaries = self.layout.boundaries(rollout_steps)

    def get(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, R+h, ...)`` and action blocks ``(B, R+h-1, block_dim)`` of windows ``index``."""
        frames, steps = self.sampler.rows(index)
        x = self.table[torch.from_numpy(frames[:, self.boundaries])]
        return x, self.layout.blocks(self.actions[torch.from_numpy(steps)])

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get(torch.randint(len(self.sampler), (batch,), generator=generator).numpy())


def dynamics_losses(model: WorldModel, features: torch.Tensor, blocks: torch.Tensor,
                    target_latents: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Loss terms of a batch of windows: block-boundary ``features (B, R+h, ...)`` and the action
    ``blocks (B, R+h-1, block_dim)`` between them; ``target_latents``: the EMA head's latents of
    ``features`` when the caller has them already."""
    L = model.layout
    latents = model.encoder.latents(features)
    if target_latents is None:
        with torch.no_grad():
            target_latents = model.encoder.latents(features, target=True)
    targets = L.step_latents(target_latents).detach()
    states = L.window_states(latents, blocks)[:, :-1]  # (B, R, state_dim)
    actions = L.step_blocks(blocks)  # (B, R, block_dim)
    one_step = F.mse_loss(L.newest(model.predict(states, actions, check_inputs=False)), targets)
    rollout = F.mse_loss(L.newest(model.rollout(states[:, 0], actions, check_inputs=False)), targets)
    vc = variance_covariance(latents.reshape(-1, L.latent_dim)) if model.cfg.latent_dim else one_step.new_zeros(())
    terms = {"one_step": one_step, "rollout": rollout, "vc": vc}
    if model.inverse is not None:  # the action block A_t from the state s_t (it holds the velocity) and z_{t+k}
        terms["inverse"] = F.mse_loss(model.inverse(torch.cat([states, L.step_latents(latents)], -1)), actions)
    return terms


@torch.no_grad()
def validate(model: WorldModel, batches: WindowBatches, n: int = 1024, seed: int = 0) -> dict:
    """Mean loss terms on ``n`` fixed windows, the rollout error per horizon, and the target
    latents' mean per-dimension std (a collapse shows as ~0)."""
    was_training = model.training
    model.eval()
    x, a = batches.sample(n, torch.Generator().manual_seed(seed))
    x, a = x.to(model.device), a.to(model.device)
    L = model.layout
    z = model.encoder.latents(x, target=True)
    terms = {k: v.item() for k, v in dynamics_losses(model, x, a, z).items()}
    s0 = L.window_states(z, a)[:, 0]
    per_horizon = ((L.newest(model.rollout(s0, L.step_blocks(a))) - L.step_latents(z)) ** 2).mean((0, 2))
    latent_std = z.reshape(-1, L.latent_dim).std(0).mean().item()
    model.train(was_training)
    return {**terms, "rollout_mse_by_horizon": per_horizon.tolist(), "latent_std": latent_std}


class DynamicsObjective:
    """The world model's loss on windows of the train split; validation on the val split at log steps."""

    def __init__(self, model: WorldModel, cfg: DynamicsTrainConfig, train: WindowBatches, val: WindowBatches):
        self.model, self.cfg, self.train_batches, self.val_batches = model, cfg, train, val
        self.generators = {"windows": torch.Generator().manual_seed(cfg.seed)}
        self.weights = {"one_step": 1.0, "rollout": cfg.rollout_weight, "vc": cfg.vc_weight,
                        "inverse": cfg.inverse_weight}

    def optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def batch(self, rank: int, world: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, a = self.train_batches.sample(self.cfg.batch_size, self.generators["windows"])
        part = rank_slice(self.cfg.batch_size, rank, world)
        return x[part].to(device), a[part].to(device)

    def loss(self, model: WorldModel, batch) -> dict[str, torch.Tensor]:
        terms = dynamics_losses(model, *batch)
        return {"loss": sum(self.weights[k] * v for k, v in terms.items()), **terms}

    def after_step(self, step: int) -> dict[str, float]:
        ema_update(self.model.encoder.target_head, self.model.encoder.head, self.cfg.ema)
        return {}

    def log(self, step: int, out: dict) -> dict[str, float]:
        """Validation terms."""
        val = validate(self.model, self.val_batches, self.cfg.val_windows)
        return {"val_one_step": val["one_step"], "val_rollout": val["rollout"], "val_latent_std": val["latent_std"]}

    def check(self, step: int, row: dict) -> None:
        """Stop a run whose trained latents collapsed."""
        if self.model.cfg.latent_dim and row["val_latent_std"] < MIN_LATENT_STD:
            raise RepresentationCollapse(
                f"the head's latents collapsed at step {step}: mean per-dimension std "
                f"{row['val_latent_std']:.2e} < {MIN_LATENT_STD} (raise train.vc_weight)")

    def config(self) -> dict:
        return self.model.config()

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass
