"""Action-conditioned world model in a latent space learned with JEPA objectives.

Two encoders (``DynamicsConfig.encoder``):

- ``frozen``: the frozen pretrained JEPA (ViT) encoder. A frame's features ``x_t`` are
  its (EMA target) patch tokens, average-pooled onto a ``pool x pool`` grid, flattened,
  optionally projected onto their top ``project_dim`` principal components (fitted once
  on training frames), and standardised with dataset statistics. Its latent
  ``z_t = head(x_t)`` is a small MLP onto ``latent_dim`` dimensions, trained with the
  predictor (``latent_dim = 0``: the identity, ``z_t = x_t``). As in JEPA, the head has
  an EMA twin, ``target_head``, that gives the prediction targets under stop-gradient
  and the states used for planning; a variance-covariance term keeps the online head
  from collapsing.
- ``conv``: a small conv net trained end to end from pixels with the predictor (as
  PLDM and LeWorldModel train theirs). The "features" are the images themselves and
  the head is the conv net, with the same EMA twin and variance-covariance guard.

The model steps over blocks of ``k`` env steps (``a_t .. a_{t+k-1}`` concatenated).
One image shows no velocity, so the state holds the latents of the last ``history``
block boundaries and the action blocks between them,
``s_t = [z_{t-(h-1)k}, ..., z_{t-k}, z_t, A_{t-(h-1)k}, ..., A_{t-k}]``: frames a block
apart pin the velocity down ``k`` times better than consecutive frames (the arm moves
``k`` times further between them), and the actions between them account for the
torques applied meanwhile. The predictor is a residual MLP on the newest latent,
``z_{t+k} = z_t + f([s_t, A_t])``; the rest of the next state is a shift.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel.encoder import ConvEncoder, ViTEncoder

ENCODERS = ("frozen", "conv")


@dataclass
class DynamicsConfig:
    """The latent state and the action-conditioned predictor.

    Attributes:
        encoder: ``frozen`` (the pretrained ViT's features and a trained MLP head) or
            ``conv`` (a conv net trained end to end from pixels; ``pool``, ``project_dim``
            and ``standardize`` do not apply).
        pool: side of the grid the patch tokens are average-pooled onto (1 = one
            vector per image, the patch grid's side = every token).
        project_dim: principal components kept (0 = keep all ``pool^2 * width``
            pooled dimensions).
        history: frame latents per state, one action block apart (2 gives the velocity).
        standardize: ``per_dim`` scales every latent dimension to unit variance;
            ``global`` divides all by one scale, keeping the principal components'
            variances, so losses and planning costs weigh them as the encoder does.
        action_block: env steps per model step; their actions are concatenated.
        hidden: hidden width of the predictor MLP.
        depth: hidden layers of the predictor MLP.
        latent_dim: size of a frame latent made by the trained head (0 = no head:
            the standardised features are the latent).
        head_hidden: hidden width of the head MLP (and of the conv encoder's MLP).
        conv_width: channels of the conv encoder's first layer.
        dropout: dropout after each hidden layer of the predictor (LeWorldModel: 0.1).
        inverse: add an inverse-dynamics head ``(s_t, z_{t+k}) -> A_t`` (as PLDM): training
            it through the encoder makes the latent keep what the actions move.
    """

    encoder: str = "frozen"
    pool: int = 8
    project_dim: int = 256
    history: int = 2
    standardize: str = "per_dim"
    action_block: int = 5
    hidden: int = 512
    depth: int = 3
    latent_dim: int = 32
    head_hidden: int = 512
    conv_width: int = 32
    dropout: float = 0.0
    inverse: bool = False

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; expected one of {list(ENCODERS)}")
        if self.encoder == "conv" and (self.latent_dim < 1 or self.conv_width % 8):
            raise ValueError(f"the conv encoder needs latent_dim >= 1 and conv_width a multiple of 8, got "
                             f"{self.latent_dim}, {self.conv_width}")
        if self.standardize not in ("per_dim", "global"):
            raise ValueError(f"standardize must be 'per_dim' or 'global', got {self.standardize!r}")
        if min(self.pool, self.history, self.action_block, self.hidden, self.depth, self.head_hidden) < 1:
            raise ValueError(f"pool, history, action_block, hidden, depth and head_hidden must be >= 1, got {self}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.project_dim < 0 or self.latent_dim < 0:
            raise ValueError(f"project_dim and latent_dim must be >= 0, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class LatentWorldModel(nn.Module):
    """``encode(frames) -> s``, ``predict(s, a) -> s_next``, ``rollout(s0, actions) -> states``.

    Args:
        encoder: the frozen image encoder (``None`` with ``cfg.encoder == "conv"``).
        cfg: state and predictor settings.
        action_dim: size of one env action.
        image_shape: ``(C, H, W)`` of the images (needed without a frozen encoder).
    """

    def __init__(self, encoder: ViTEncoder | None, cfg: DynamicsConfig, action_dim: int,
                 image_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.cfg, self.action_dim = cfg, action_dim
        self.frozen = cfg.encoder == "frozen"
        if self.frozen:
            if encoder is None:
                raise ValueError("the frozen-encoder world model needs a pretrained encoder")
            grid = encoder.cfg.grid[0]
            if grid % cfg.pool:
                raise ValueError(f"pool {cfg.pool} must divide the patch grid side {grid}")
            self.encoder = encoder.requires_grad_(False).eval()
            image_shape = (encoder.cfg.in_chans, encoder.cfg.image_size, encoder.cfg.image_size)
            pooled_dim = cfg.pool**2 * encoder.width
            if cfg.project_dim > pooled_dim:
                raise ValueError(f"project_dim {cfg.project_dim} exceeds the {pooled_dim} pooled dimensions")
            self.feature_dim = cfg.project_dim or pooled_dim
        else:
            if encoder is not None or image_shape is None:
                raise ValueError("the conv world model trains its own encoder: pass encoder=None and image_shape")
            self.encoder, pooled_dim, self.feature_dim = None, 0, 0  # its features are the images
        self.image_shape = tuple(int(x) for x in image_shape)
        self.frame_dim = cfg.latent_dim or self.feature_dim
        self.history = cfg.history
        self.block_dim = cfg.action_block * action_dim
        self.latent_part = cfg.history * self.frame_dim  # the state's frame latents, then its past action blocks
        self.state_dim = self.latent_part + (cfg.history - 1) * self.block_dim
        if self.frozen and cfg.project_dim:
            self.register_buffer("pca_mean", torch.zeros(pooled_dim))
            self.register_buffer("pca_components", torch.eye(pooled_dim)[:, : cfg.project_dim].contiguous())
        self.register_buffer("latent_mean", torch.zeros(self.feature_dim))
        self.register_buffer("latent_std", torch.ones(self.feature_dim))
        if not self.frozen:
            self.head = ConvEncoder(self.image_shape, cfg.latent_dim, width=cfg.conv_width, hidden=cfg.head_hidden)
        elif cfg.latent_dim:
            self.head = nn.Sequential(nn.Linear(self.feature_dim, cfg.head_hidden), nn.LayerNorm(cfg.head_hidden),
                                      nn.GELU(), nn.Linear(cfg.head_hidden, cfg.latent_dim))
        else:
            self.head = nn.Identity()
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)
        layers: list[nn.Module] = []
        width = self.state_dim + self.block_dim
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.GELU()]
            layers += [nn.Dropout(cfg.dropout)] if cfg.dropout else []
            width = cfg.hidden
        last = nn.Linear(width, self.frame_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.f = nn.Sequential(*layers, last)
        if cfg.inverse:
            self.inverse = nn.Sequential(nn.Linear(self.state_dim + self.frame_dim, cfg.hidden),
                                         nn.LayerNorm(cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, self.block_dim))

    def train(self, mode: bool = True) -> "LatentWorldModel":
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # always frozen
        self.target_head.eval()
        return self

    @torch.no_grad()
    def pooled(self, obs: torch.Tensor) -> torch.Tensor:
        """Pooled patch tokens ``(B, pool^2 * D)`` of images ``(B, C, H, W)`` uint8."""
        tokens = self.encoder(obs)  # (B, N, D)
        g = self.encoder.cfg.grid[0]
        grid = rearrange(tokens, "b (h w) d -> b d h w", h=g, w=g)
        pooled = F.adaptive_avg_pool2d(grid, self.cfg.pool)  # (B, D, p, p)
        return rearrange(pooled, "b d h w -> b (h w d)")

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    @torch.no_grad()
    def raw_latent(self, obs: torch.Tensor) -> torch.Tensor:
        """Unstandardised frame features ``(B, feature_dim)`` of images ``(B, C, H, W)`` uint8
        (with the conv encoder: the images themselves)."""
        if not self.frozen:
            if obs.ndim != 4 or tuple(obs.shape[1:]) != self.image_shape:
                raise ValueError(f"images must have shape (B, {', '.join(map(str, self.image_shape))}), "
                                 f"got {tuple(obs.shape)}")
            return obs
        x = self.pooled(obs)
        if self.cfg.project_dim:
            x = (x - self.pca_mean) @ self.pca_components
        return x

    def encode(self, frames: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """States ``(B, state_dim)`` of images ``(B, h, C, H, W)`` uint8 taken one action block
        apart, and the ``(h - 1) * k`` actions ``(B, (h-1)*k, A)`` taken between them.

        One image ``(B, C, H, W)`` without actions stands for a still scene (the image
        repeated, zero torques).
        """
        if frames.ndim == 4:
            frames = frames.unsqueeze(1).expand(-1, self.history, -1, -1, -1)
        if frames.ndim != 5 or frames.shape[1] != self.history:
            raise ValueError(f"frames must be (B, {self.history}, C, H, W) or (B, C, H, W), got {tuple(frames.shape)}")
        B = frames.shape[0]
        past = (self.history - 1) * self.cfg.action_block
        if actions is None:
            actions = frames.new_zeros((B, past, self.action_dim), dtype=torch.float32)
        if actions.shape != (B, past, self.action_dim):
            raise ValueError(f"actions must be (B, {past}, {self.action_dim}), got {tuple(actions.shape)}")
        z = self.latents(frames)
        return self.state(z, actions.reshape(B, self.history - 1, self.block_dim).to(z.dtype))

    @torch.no_grad()
    def latents(self, obs: torch.Tensor) -> torch.Tensor:
        """Frame latents ``(..., frame_dim)`` (EMA head) of images ``(..., C, H, W)`` uint8."""
        x = self.standardise(self.raw_latent(obs.flatten(0, -4)))
        return self.embed(x, target=True).unflatten(0, obs.shape[:-3])

    def standardise(self, raw: torch.Tensor) -> torch.Tensor:
        """Standardised features of raw ones ``(..., feature_dim)``, on ``raw``'s device (images
        pass through: the conv encoder normalises them itself)."""
        if not self.frozen:
            return raw
        return (raw - self.latent_mean.to(raw.device)) / self.latent_std.to(raw.device)

    def embed(self, features: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Frame latents ``(..., frame_dim)`` of standardised features ``(..., feature_dim)``.

        ``target=True`` uses the EMA head, as for prediction targets and planning.
        """
        return (self.target_head if target else self.head)(features)

    def state(self, latents: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """A state of frame latents ``(..., h, frame_dim)`` and the action blocks ``(..., h-1, block_dim)``
        between them."""
        return torch.cat([latents.flatten(-2), blocks.flatten(-2)], -1)

    def window_states(self, latents: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """States ``(B, R + 1, state_dim)`` at the ``R + 1`` steps of a window of block-boundary
        latents ``(B, R + h, frame_dim)`` and its action blocks ``(B, R + h - 1, block_dim)``."""
        h, R = self.history, latents.shape[1] - self.history
        if R < 0 or blocks.shape[1] != R + h - 1:
            raise ValueError(f"need R + {h} latents and R + {h - 1} action blocks (R >= 0), got "
                             f"{latents.shape[1]} and {blocks.shape[1]}")
        return torch.stack([self.state(latents[:, r : r + h], blocks[:, r : r + h - 1]) for r in range(R + 1)], 1)

    def newest(self, s: torch.Tensor) -> torch.Tensor:
        """The newest frame latent ``(..., frame_dim)`` of states ``(..., state_dim)``."""
        return self.frame_latents(s)[..., -1, :]

    def frame_latents(self, s: torch.Tensor) -> torch.Tensor:
        """The frame latents ``(..., history, frame_dim)`` of states ``(..., state_dim)``, oldest first."""
        return s[..., : self.latent_part].unflatten(-1, (self.history, self.frame_dim))

    def predict(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Next state: ``s (..., state_dim)``, ``a (..., action_block * A)`` -> ``(..., state_dim)``."""
        if a.shape[-1] != self.block_dim:
            raise ValueError(f"action block must have {self.block_dim} values (last axis), got {a.shape[-1]}")
        d, z, past = self.frame_dim, s[..., : self.latent_part], s[..., self.latent_part :]
        new = z[..., -d:] + self.f(torch.cat([s, a], dim=-1))
        return torch.cat([z[..., d:], new, past[..., self.block_dim :], a], -1)

    def rollout(self, s0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """States after each block: ``s0 (B, state_dim)``, ``actions (B, H, block)`` -> ``(B, H, state_dim)``."""
        states, s = [], s0
        for h in range(actions.shape[1]):
            s = self.predict(s, actions[:, h])
            states.append(s)
        return torch.stack(states, dim=1)

    @torch.no_grad()
    def fit_projection(self, pooled: torch.Tensor) -> None:
        """Principal components of pooled features ``(n, pool^2 * D)`` (n >= project_dim)."""
        if not self.frozen or not self.cfg.project_dim:
            return
        if len(pooled) < self.cfg.project_dim:
            raise ValueError(f"need at least {self.cfg.project_dim} frames to fit the projection, got {len(pooled)}")
        mean = pooled.mean(0)
        q = self.cfg.project_dim
        _, _, v = torch.pca_lowrank(pooled - mean, q=min(q + 16, *pooled.shape), center=False, niter=4)
        self.pca_mean.copy_(mean)
        self.pca_components.copy_(v[:, :q])

    def set_latent_stats(self, raw_latents: torch.Tensor) -> None:
        """Standardise frame features with the mean and std of ``raw_latents (n, feature_dim)``."""
        if not self.frozen:
            return
        self.latent_mean.copy_(raw_latents.mean(0))
        std = raw_latents.std(0).clamp_min(1e-6)
        if self.cfg.standardize == "global":  # one scale: unit mean variance over dimensions
            std = std.pow(2).mean().sqrt().expand_as(std)
        self.latent_std.copy_(std)
