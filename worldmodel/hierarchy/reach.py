"""A learned temporal distance in latent space: how many env steps lie between two frames.

The hand-down rule ``learned`` (``planners.hierarchy``) asks it whether the goal is within reach of
the level below. It is trained on hindsight pairs: frame ``t`` and frame ``t + k`` of one training
episode, both as level-1 latents (the newest frame's, as the planners' goal distance reads them),
and a classifier over bins of ``k`` (TRM's learned reachability and RC-aux's budget-conditioned
reachability are the examples). Its cumulative distribution is ``P(k <= b)`` for every budget ``b``
at once, so one head answers "within the plan's horizon" and "within the task's budget" alike.

What it learns is the data-collecting policy's temporal distance, not the shortest path's: a random
policy takes longer than a planner. ``within`` therefore reads the *median* of the distance
distribution against a budget in env steps that is set per env by measurement, not derived.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from worldmodel.checkpoint import CheckpointError, load_config, load_weights, save_checkpoint
from worldmodel.data.episodes import Episodes
from worldmodel.hierarchy.objective import check_latents
from worldmodel.training.loop import OptimConfig

REACH_DIR = "reach"  # a world model's learned temporal distance lives in <model>/reach
REACH_FORMAT = 1


@dataclass
class ReachConfig:
    """The temporal-distance head.

    Attributes:
        max_steps: the longest distance told apart, in env steps; farther pairs share the last bin.
        bins: bins of equal width over ``[0, max_steps)``.
        hidden: width of the MLP.
        layers: hidden layers of the MLP.
    """

    max_steps: int = 100
    bins: int = 20
    hidden: int = 256
    layers: int = 2

    def __post_init__(self):
        if self.bins < 2 or self.max_steps < self.bins or self.max_steps % self.bins:
            raise ValueError(f"reach needs bins >= 2 dividing max_steps (>= bins), got bins={self.bins}, "
                             f"max_steps={self.max_steps}")
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"reach.hidden and reach.layers must be >= 1, got {self.hidden}, {self.layers}")

    @property
    def width(self) -> int:
        """Env steps per bin."""
        return self.max_steps // self.bins


class TemporalDistance(nn.Module):
    """``P(k | z, g)`` over bins of the env steps ``k`` from frame latent ``z`` to frame latent ``g``."""

    def __init__(self, latent_dim: int, cfg: ReachConfig):
        super().__init__()
        self.latent_dim, self.cfg = latent_dim, cfg
        layers, width = [], 3 * latent_dim
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU()]
            width = cfg.hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, cfg.bins))
        self.register_buffer("mean", torch.zeros(latent_dim))  # of the training latents (fit_scale)
        self.register_buffer("scale", torch.ones(latent_dim))

    @torch.no_grad()
    def fit_scale(self, latents: torch.Tensor) -> None:
        """Standardise inputs by the training latents' per-dimension mean and deviation."""
        self.mean.copy_(latents.mean(0).to(self.mean))
        self.scale.copy_(latents.std(0).clamp_min(1e-6).to(self.scale))

    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., bins)`` for latents ``z`` and ``g`` ``(..., latent_dim)``."""
        z, g = (z - self.mean) / self.scale, (g - self.mean) / self.scale
        return self.net(torch.cat([z, g, g - z], -1))

    def median_steps(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The median of the predicted distance, in env steps (the upper edge of its bin), ``(...,)``."""
        cdf = self(z, g).softmax(-1).cumsum(-1)
        return ((cdf < 0.5).sum(-1) + 1).to(z.dtype) * self.cfg.width

    def within(self, z: torch.Tensor, g: torch.Tensor, steps: float) -> torch.Tensor:
        """Whether ``g`` is predicted within ``steps`` env steps of ``z`` (the median distance), ``(...,) bool``."""
        return self.median_steps(z, g) <= steps

    # --- checkpoints -----------------------------------------------------------------------------
    def config(self) -> dict:
        return {"format": REACH_FORMAT, "kind": "reach", "latent_dim": self.latent_dim, "reach": asdict(self.cfg)}

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> Path:
        return save_checkpoint(path, {**self.config(), **(extra or {})}, self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        allow_unverified: bool = False) -> "TemporalDistance":
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no learned temporal distance at {path}; train one with `python "
                                    f"experiments/train_reach.py model={path.parent} install=true`")
        config = load_config(path)
        if config.get("kind") != "reach" or config.get("format") != REACH_FORMAT:
            raise CheckpointError(f"{path} is no temporal-distance checkpoint (kind {config.get('kind')!r}, format "
                                  f"{config.get('format')!r}; expected 'reach', {REACH_FORMAT})")
        try:
            model = cls(int(config["latent_dim"]), ReachConfig(**config["reach"]))
            model.load_state_dict(load_weights(path, allow_unverified))
        except (KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{path}: not a temporal distance its config.json describes ({err})") from None
        return model.to(device).eval()


class HindsightPairs:
    """Ordered frame pairs ``(t, t + k)`` of one episode of a split, with ``k`` uniform in
    ``[0, min(max_steps, frames left))`` (so every bin is drawn alike where episodes allow)."""

    def __init__(self, episodes: Episodes, latents: torch.Tensor, max_steps: int):
        check_latents(latents, episodes, latents.shape[-1] if latents.ndim else 0)
        if int(episodes.lengths.max()) < 1:
            raise ValueError("hindsight pairs need episodes of at least one step")
        self.latents, self.max_steps = latents, max_steps
        self.starts = torch.from_numpy(episodes.frame_starts)
        self.frames = torch.from_numpy(episodes.lengths.astype(np.int64) + 1)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z (B, d)``, ``g (B, d)`` and the steps ``k (B,)`` between them."""
        weights = self.frames.double()
        e = torch.multinomial(weights, batch, replacement=True, generator=generator)
        n = self.frames[e]
        t = (torch.rand(batch, generator=generator, dtype=torch.float64) * n).long()
        span = torch.minimum(n - t, torch.tensor(self.max_steps))  # k in [0, span)
        k = (torch.rand(batch, generator=generator, dtype=torch.float64) * span).long()
        first = self.starts[e] + t
        return self.latents[first], self.latents[first + k], k

    def fixed(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sample(n, torch.Generator().manual_seed(seed))


@dataclass
class ReachTrainConfig(OptimConfig):
    """Optimisation of the temporal-distance head; ``val_pairs`` fixed validation pairs are scored at
    every log step."""

    steps: int = 3000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.05
    log_every: int = 100
    val_pairs: int = 4096

    def __post_init__(self):
        super().__post_init__()
        if self.val_pairs < 1:
            raise ValueError(f"val_pairs must be >= 1, got {self.val_pairs}")


def bin_of(k: torch.Tensor, cfg: ReachConfig) -> torch.Tensor:
    """The bin of distances ``k`` (env steps); those at or past ``max_steps`` share the last."""
    return (k // cfg.width).clamp_max(cfg.bins - 1)


class ReachObjective:
    """Cross-entropy of the distance bin of hindsight pairs (an :class:`~worldmodel.training.loop.Objective`)."""

    def __init__(self, head: TemporalDistance, cfg: ReachTrainConfig, train: HindsightPairs, val: HindsightPairs):
        self.model, self.head, self.cfg, self.train_pairs = head, head, cfg, train
        self.generators = {"pairs": torch.Generator().manual_seed(cfg.seed)}
        self.val = val.fixed(cfg.val_pairs, seed=cfg.seed + 1)
        # the baseline a head must beat: the training distances' median, whatever the pair
        k = train.fixed(cfg.val_pairs, seed=cfg.seed + 2)[2]
        self.prior_median = float((bin_of(k, head.cfg).median() + 1) * head.cfg.width)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.head.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def batch(self, rank: int, world: int, device: torch.device):
        z, g, k = self.train_pairs.sample(self.cfg.batch_size, self.generators["pairs"])
        part = slice(rank * len(k) // world, (rank + 1) * len(k) // world)
        return z[part].to(device), g[part].to(device), k[part].to(device)

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        z, g, k = batch
        loss = F.cross_entropy(model(z, g), bin_of(k, model.cfg))
        return {"loss": loss, "ce": loss}

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def log(self, step: int, out: dict) -> dict[str, float]:
        return validate_reach(self.head, *self.val, self.prior_median)

    def check(self, step: int, row: dict) -> None:
        pass

    def config(self) -> dict:
        return self.head.config()

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass


@torch.no_grad()
def validate_reach(head: TemporalDistance, z: torch.Tensor, g: torch.Tensor, k: torch.Tensor,
                   prior_median: float) -> dict[str, float]:
    """On pairs ``(z, g, k)``: cross-entropy, the mean absolute error of the predicted median in env
    steps (``val_mae``) against that of the training median for every pair (``val_mae_prior``), and
    the share of pairs ordered right by the predicted median among pairs whose ``k`` differ by a bin
    or more (``val_order``; 0.5 is chance)."""
    was = head.training
    head.eval()
    device = head.mean.device
    z, g, k = z.to(device), g.to(device), k.to(device)
    cfg = head.cfg
    truth = bin_of(k, cfg)
    ce = F.cross_entropy(head(z, g), truth).item()
    median = head.median_steps(z, g)
    centre = (truth.to(median.dtype) + 0.5) * cfg.width
    mae = (median - cfg.width / 2 - centre).abs().mean().item()
    prior = (prior_median - cfg.width / 2 - centre).abs().mean().item()
    i, j = torch.randperm(len(k), generator=torch.Generator().manual_seed(0)).to(device).chunk(2)
    n = min(len(i), len(j))
    i, j = i[:n], j[:n]
    apart = (truth[i] - truth[j]).abs() >= 1
    right = torch.sign(median[i] - median[j]) == torch.sign((truth[i] - truth[j]).to(median.dtype))
    order = right[apart].float().mean().item() if bool(apart.any()) else float("nan")
    head.train(was)
    return {"val_ce": ce, "val_mae": mae, "val_mae_prior": prior, "val_order": order}
