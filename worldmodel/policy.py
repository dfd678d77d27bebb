"""An amortized goal-conditioned policy in latent space: ``A_t = pi(s_t, z_goal)``.

It maps a level-1 state (what the planners start from: the newest block-boundary latents and the
action blocks between them) and a goal frame latent to the next action block, in one forward pass.
It is trained on the dataset's cached latents with hindsight goals: for a state at env step ``t`` of
a training episode, the frame ``t + j`` of the same episode (``j`` uniform in ``[1, max_steps]``
env steps, where the episode allows) is the goal. Two terms, weighted:

- ``bc``: the action block actually taken from ``t`` is the target (goal-conditioned behaviour
  cloning, as GCBC and GC-IDM do): it learns the data-collecting policy's way to a goal, averaged,
  which says little where the data are random actions;
- ``plan``: the policy's own actions rolled out ``horizon`` blocks through the frozen world model,
  and the mean squared distance of the predicted newest latents from the goal's (the planners'
  goal cost) minimised through the model: the planning problem, amortized.

It is a fast guess, which :mod:`planners.mpc` uses as an agent of its own (``planner=policy``: the
plan it rolls out through the model) and as the search's proposal (``proposal=policy``: a candidate
of every CEM / iCEM / MPPI iteration beside the mean, and an episode's first mean).
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
from worldmodel.dynamics.layout import StateLayout
from worldmodel.training.loop import OptimConfig

POLICY_DIR = "policy"  # a world model's amortized policy lives in <model>/policy
POLICY_FORMAT = 1


@dataclass
class PolicyConfig:
    """The policy network.

    Attributes:
        hidden: width of its hidden layers.
        layers: hidden layers.
        max_steps: the farthest hindsight goal, in env steps.
    """

    hidden: int = 512
    layers: int = 3
    max_steps: int = 50

    def __post_init__(self):
        if self.hidden < 1 or self.layers < 1 or self.max_steps < 1:
            raise ValueError(f"need hidden, layers and max_steps >= 1, got {self.hidden}, {self.layers}, "
                             f"{self.max_steps}")


class GoalPolicy(nn.Module):
    """``pi(s, g)``: the next action block ``(..., block_dim)`` inside the action box, for level-1
    states ``s (..., state_dim)`` and goal frame latents ``g (..., latent_dim)``."""

    def __init__(self, layout: StateLayout, cfg: PolicyConfig, low: np.ndarray, high: np.ndarray):
        super().__init__()
        if len(low) != layout.action_dim or len(high) != layout.action_dim:
            raise ValueError(f"action bounds of {len(low)} and {len(high)} values for actions of {layout.action_dim}")
        self.layout, self.cfg = layout, cfg
        layers, width = [], layout.state_dim + 2 * layout.latent_dim
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU()]
            width = cfg.hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, layout.block_dim))
        k = layout.action_block
        self.register_buffer("low", torch.as_tensor(np.tile(low, k), dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(np.tile(high, k), dtype=torch.float32))
        self.register_buffer("state_mean", torch.zeros(layout.state_dim))  # of the training inputs (fit_scale)
        self.register_buffer("state_scale", torch.ones(layout.state_dim))

    @torch.no_grad()
    def fit_scale(self, states: torch.Tensor) -> None:
        """Standardise inputs by the training states' per-dimension mean and deviation (goals by those of
        the newest latent)."""
        self.state_mean.copy_(states.mean(0).to(self.state_mean))
        self.state_scale.copy_(states.std(0).clamp_min(1e-6).to(self.state_scale))

    def forward(self, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        L = self.layout
        if s.shape[-1] != L.state_dim or g.shape[-1] != L.latent_dim:
            raise ValueError(f"states must be (..., {L.state_dim}) and goals (..., {L.latent_dim}), got "
                             f"{tuple(s.shape)} and {tuple(g.shape)}")
        mean, scale = self.state_mean.to(s), self.state_scale.to(s)
        x = (s - mean) / scale
        newest = slice(L.latent_part - L.latent_dim, L.latent_part)
        g = (g - mean[newest]) / scale[newest]
        out = torch.tanh(self.net(torch.cat([x, g, g - x[..., newest]], -1)))
        low, high = self.low.to(out), self.high.to(out)
        return low + (out + 1) * (high - low) / 2

    # --- checkpoints -----------------------------------------------------------------------------
    def config(self) -> dict:
        return {"format": POLICY_FORMAT, "kind": "policy", "layout": asdict(self.layout), "policy": asdict(self.cfg),
                "action_low": self.low[: self.layout.action_dim].tolist(),
                "action_high": self.high[: self.layout.action_dim].tolist()}

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> Path:
        return save_checkpoint(path, {**self.config(), **(extra or {})}, self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        allow_unverified: bool = False) -> "GoalPolicy":
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no amortized policy at {path}; train one with `python "
                                    f"experiments/train_policy.py model={path.parent} install=true`")
        config = load_config(path)
        if config.get("kind") != "policy" or config.get("format") != POLICY_FORMAT:
            raise CheckpointError(f"{path} is no policy checkpoint (kind {config.get('kind')!r}, format "
                                  f"{config.get('format')!r}; expected 'policy', {POLICY_FORMAT})")
        try:
            policy = cls(StateLayout(**config["layout"]), PolicyConfig(**config["policy"]),
                         np.asarray(config["action_low"], np.float32), np.asarray(config["action_high"], np.float32))
            policy.load_state_dict(load_weights(path, allow_unverified))
        except (KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{path}: not a policy its config.json describes ({err})") from None
        return policy.to(device).eval()


class HindsightStates:
    """States at env steps ``t`` of a split's episodes (those with a full state before them and a whole
    action block after), each with a hindsight goal ``t + j`` (``j`` uniform in ``[1, min(max_steps,
    steps left)]``) and the action block taken from ``t``.

    Args:
        episodes: the split.
        latents: level-1 latents of every frame of it ``(frames, latent_dim)``.
        layout: the level-1 model's state layout.
        max_steps: the farthest goal, in env steps.
    """

    def __init__(self, episodes: Episodes, latents: torch.Tensor, layout: StateLayout, max_steps: int):
        if latents.ndim != 2 or latents.shape != (int(episodes.lengths.sum()) + episodes.num_episodes,
                                                  layout.latent_dim):
            raise ValueError(f"latents must be one (latent_dim={layout.latent_dim}) row per frame of the split, got "
                             f"{tuple(latents.shape)}")
        self.layout, self.latents, self.max_steps = layout, latents, max_steps
        self.actions = torch.as_tensor(np.array(episodes.actions), dtype=torch.float32)
        self.frame_starts = torch.from_numpy(np.asarray(episodes.frame_starts, np.int64))
        self.step_starts = torch.from_numpy(np.asarray(episodes.step_starts, np.int64))
        self.steps = torch.from_numpy(episodes.lengths.astype(np.int64))
        self.count = layout.acting_starts(self.steps)  # valid t per episode, from t = span
        if int(self.count.sum()) == 0:
            raise ValueError(f"no episode is long enough for a state ({layout.span} steps) and an action block "
                             f"({layout.action_block}) after it")

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """States ``(B, state_dim)``, goal latents ``(B, latent_dim)`` and action blocks ``(B, block_dim)``."""
        L = self.layout
        e = torch.multinomial(self.count.double(), batch, replacement=True, generator=generator)
        t = L.acting_step(self.count[e], torch.rand(batch, generator=generator, dtype=torch.float64))
        left = torch.clamp(self.steps[e] - t, max=self.max_steps)  # goals up to max_steps, within the episode
        ahead = 1 + (torch.rand(batch, generator=generator, dtype=torch.float64) * left).long()
        frame, step = self.frame_starts[e] + t, self.step_starts[e] + t
        frames, inside, taken = L.acting_indices(frame, step)
        s = L.compose(self.latents[frames], L.blocks(self.actions[inside]))
        return s, self.latents[frame + ahead], self.actions[taken].flatten(1)

    def fixed(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sample(n, torch.Generator().manual_seed(seed))


@dataclass
class PolicyTrainConfig(OptimConfig):
    """Optimisation of the policy; ``val_examples`` fixed validation examples are scored at every log step.

    Attributes:
        bc_weight: weight of the behaviour-cloning term.
        plan_weight: weight of the goal distance of the policy's rollout through the world model.
        horizon: action blocks of that rollout.
    """

    steps: int = 3000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    log_every: int = 100
    val_examples: int = 4096
    bc_weight: float = 0.1
    plan_weight: float = 1.0
    horizon: int = 5

    def __post_init__(self):
        super().__post_init__()
        if self.val_examples < 1 or self.horizon < 1:
            raise ValueError(f"val_examples and horizon must be >= 1, got {self.val_examples}, {self.horizon}")
        if min(self.bc_weight, self.plan_weight) < 0 or self.bc_weight + self.plan_weight == 0:
            raise ValueError(f"need loss weights >= 0, not both 0, got bc_weight={self.bc_weight}, "
                             f"plan_weight={self.plan_weight}")


class PolicyObjective:
    """The ``bc`` and ``plan`` terms on hindsight goals (an :class:`~worldmodel.training.loop.Objective`);
    validated against the mean action's error and, with a world model, by how much of the distance to
    the goal the policy's rollout closes.

    Args:
        world: the frozen level-1 world model (``predict``, ``newest``) the ``plan`` term rolls out through;
            required when ``cfg.plan_weight > 0``.
    """

    def __init__(self, policy: GoalPolicy, cfg: PolicyTrainConfig, train: HindsightStates, val: HindsightStates,
                 world=None):
        if cfg.plan_weight > 0 and world is None:
            raise ValueError(f"plan_weight={cfg.plan_weight} rolls the policy out through a world model; pass one")
        self.model, self.policy, self.cfg, self.train_examples = policy, policy, cfg, train
        self.world = world.requires_grad_(False).eval() if world is not None else None
        self.generators = {"examples": torch.Generator().manual_seed(cfg.seed)}
        self.val = val.fixed(cfg.val_examples, seed=cfg.seed + 1)
        self.mean_action = train.fixed(cfg.val_examples, seed=cfg.seed + 2)[2].mean(0)
        self.halfwidth = ((policy.high - policy.low) / 2).detach().clone()  # the action box's, per value

    def half(self, device) -> torch.Tensor:
        return self.halfwidth.to(device)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.policy.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def batch(self, rank: int, world: int, device: torch.device):
        s, g, a = self.train_examples.sample(self.cfg.batch_size, self.generators["examples"])
        part = slice(rank * len(a) // world, (rank + 1) * len(a) // world)
        return s[part].to(device), g[part].to(device), a[part].to(device)

    def rollout_distance(self, model: nn.Module, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per example ``(B, horizon)``: the squared distance (mean over latent dimensions) of the newest latent
        predicted after each block of the policy's rollout from the goal latent."""
        out = []
        for _ in range(self.cfg.horizon):
            s = self.world.predict(s, model(s, g).to(s), check_inputs=False)
            out.append(((self.world.newest(s) - g) ** 2).mean(-1))
        return torch.stack(out, 1)

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        s, g, a = batch
        bc = F.mse_loss(model(s, g) / self.half(a.device), a / self.half(a.device))
        out = {"mse": bc}
        loss = self.cfg.bc_weight * bc
        if self.cfg.plan_weight > 0:
            out["plan"] = self.rollout_distance(model, s, g).mean()
            loss = loss + self.cfg.plan_weight * out["plan"]
        return {"loss": loss, **out}

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def log(self, step: int, out: dict) -> dict[str, float]:
        was = self.policy.training
        self.policy.eval()
        device = self.policy.low.device
        s, g, a = (x.to(device) for x in self.val)
        half = self.half(device)
        mse = F.mse_loss(self.policy(s, g) / half, a / half).item()
        prior = F.mse_loss((self.mean_action.to(device) / half).expand_as(a), a / half).item()
        row = {"val_mse": mse, "val_mse_mean_action": prior}
        if self.world is not None:  # the distance left after the rollout, as a share of the distance at the start
            start = ((self.world.newest(s) - g) ** 2).mean(-1)
            row["val_distance_left"] = (self.rollout_distance(self.policy, s, g)[:, -1].mean() / start.mean()).item()
        self.policy.train(was)
        return row

    def check(self, step: int, row: dict) -> None:
        pass

    def config(self) -> dict:
        return self.policy.config()

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass
