"""Level 2 of the world model: a slow predictor over chunks of level-1 steps.

A *chunk* is ``K`` level-1 model steps (``K * action_block`` env steps). The slow level
speaks the level-1 model's verbs, one level up:

- ``encode(z, blocks) -> s2``: the slow state at a chunk boundary, from the level-1 frame
  latents of the last ``state_window`` block boundaries ``(B, W, latent_dim)`` and the
  ``W - 1`` action blocks between them;
- ``macro(chunk) -> m``: a chunk's ``K`` action blocks compressed into a macro-action of
  ``macro_dim`` values by the macro-action encoder (or, the ablation, left as the
  concatenated actions);
- ``predict(s2, m)`` / ``rollout(s2, macros)``: ``s2_{T+1} = s2_T + g2([s2_T, m_T])``;
- ``subgoal(s2) -> (B, h, latent_dim)``: the level-1 frame latents (the last ``h`` block
  boundaries, ``h`` = the level-1 history) that the slow state stands for; the hierarchical
  planner hands them to the level-1 planner as its goal.

Two slow states (``SlowConfig.state``):

- ``latent`` (HWM's choice): the level-1 frame latents at the chunk boundary themselves;
  ``subgoal`` is the identity;
- ``jepa``: a small temporal transformer over the last ``window`` level-1 latents and the
  actions between them, pretrained as a JEPA on block-masked time
  (:mod:`worldmodel.hierarchy.objective`); its EMA target encoder's output at the newest
  boundary is ``s2``, and a trained readout head gives ``subgoal``.

Planners search macro-actions in *plan coordinates* ``u``: ``m = mean + u @ scale.T``, where
``mean`` and the lower-triangular ``scale`` are fitted to the macro-actions of the training
chunks (:meth:`SlowModel.fit_macro_prior`), so a box ``|u| <= 2`` covers what the encoder
produces on data.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worldmodel.checkpoint import CheckpointError, build_fitting, load_config, load_weights, save_checkpoint
from worldmodel.dynamics.layout import StateLayout
from worldmodel.dynamics.predictor import mlp
from worldmodel.files import verified, write_verified

SLOW_FORMAT = 1
MACROS = ("encoder", "concat")


@dataclass
class SlowConfig:
    """The slow level.

    Attributes:
        chunk: level-1 model steps per slow step (``K``).
        macro: ``encoder`` (a learned macro-action encoder) or ``concat`` (the chunk's actions,
            concatenated: the ablation).
        macro_dim: size of a learned macro-action.
        state: ``latent`` (the level-1 latents at the chunk boundary) or ``jepa`` (a temporal
            encoder pretrained as a JEPA on block-masked time).
        window: level-1 block boundaries the temporal encoder sees (``jepa``).
        width: the temporal encoder's width (the slow state's size with ``jepa``).
        depth: its transformer blocks.
        heads: its attention heads.
        hidden: hidden width of the slow predictor and of the macro-action encoder.
        layers: hidden layers of the slow predictor.
    """

    chunk: int = 4
    macro: str = "encoder"
    macro_dim: int = 8
    state: str = "latent"
    window: int = 8
    width: int = 64
    depth: int = 2
    heads: int = 4
    hidden: int = 256
    layers: int = 2

    def __post_init__(self):
        if self.state not in SLOW_STATES:
            raise ValueError(f"slow state must be one of {tuple(SLOW_STATES)}, got {self.state!r}")
        if self.macro not in MACROS:
            raise ValueError(f"macro must be one of {MACROS}, got {self.macro!r}")
        if min(self.chunk, self.macro_dim, self.window, self.width, self.depth, self.heads, self.hidden,
               self.layers) < 1:
            raise ValueError(f"every size of the slow level must be >= 1, got {self}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)


class TemporalEncoder(nn.Module):
    """A transformer over a window of level-1 latents: token ``t`` is the latent at boundary ``t``
    plus the action block that led to it (none before the first) plus a learned position.

    ``forward(z (B, W, latent_dim), blocks (B, W-1, block_dim), keep=None) -> (B, W, width)``;
    ``keep (B, W) bool`` hides the other tokens from attention (the JEPA context encoder).
    """

    def __init__(self, layout: StateLayout, cfg: SlowConfig):
        super().__init__()
        self.window = cfg.window
        self.latent_in = nn.Linear(layout.latent_dim, cfg.width)
        self.action_in = nn.Linear(layout.block_dim, cfg.width)
        self.position = nn.Parameter(torch.randn(cfg.window, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 2 * cfg.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def tokens(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        a = torch.cat([blocks.new_zeros(blocks.shape[0], 1, blocks.shape[-1]), blocks], 1)
        return self.latent_in(z) + self.action_in(a) + self.position[: z.shape[1]]

    def forward(self, z: torch.Tensor, blocks: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokens(z, blocks)
        return self.norm(self.blocks(x, src_key_padding_mask=None if keep is None else ~keep))


class TemporalPredictor(nn.Module):
    """The JEPA's narrow predictor: the context encoder's tokens, projected to ``width``, and a
    mask token (plus the position) in every hidden slot -> the target representations of all slots."""

    def __init__(self, cfg: SlowConfig, width: int):
        super().__init__()
        self.inp = nn.Linear(cfg.width, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.position = nn.Parameter(torch.randn(cfg.window, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, max(1, cfg.heads // 2), 2 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = nn.Linear(width, cfg.width)

    def forward(self, context: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = torch.where(keep[..., None], self.inp(context), self.mask_token.to(context.dtype))
        return self.out(self.blocks(x + self.position[: x.shape[1]]))


class LatentState(nn.Module):
    """HWM's slow state: the level-1 frame latents of the state at the chunk boundary, as they are.

    Nothing in it trains; :meth:`subgoal` is the identity."""

    pretrainable = False

    def __init__(self, layout: StateLayout, cfg: SlowConfig):
        super().__init__()
        self.layout = layout

    @property
    def window(self) -> int:
        return self.layout.history

    @property
    def state_dim(self) -> int:
        return self.layout.latent_part

    def forward(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        return z.flatten(1)

    def subgoal(self, s2: torch.Tensor) -> torch.Tensor:
        return self.layout.frame_latents(s2)

    def freeze(self) -> None:
        pass


class JEPAState(nn.Module):
    """A slow state from a temporal transformer over the last ``window`` level-1 latents, pretrained as a
    JEPA on block-masked time: the EMA ``target_encoder``'s output at the newest boundary; a readout head
    maps it back to the level-1 frame latents it stands for (:meth:`subgoal`)."""

    pretrainable = True

    def __init__(self, layout: StateLayout, cfg: SlowConfig):
        super().__init__()
        if cfg.window < layout.history:
            raise ValueError(f"the temporal encoder's window {cfg.window} must hold the level-1 history "
                             f"{layout.history}")
        self.layout, self.window, self.state_dim = layout, cfg.window, cfg.width
        self.encoder = TemporalEncoder(layout, cfg)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.readout = mlp(cfg.width, cfg.hidden, layout.latent_part, 2)

    def forward(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        return self.target_encoder(z, blocks)[:, -1]

    def subgoal(self, s2: torch.Tensor) -> torch.Tensor:
        return self.layout.frame_latents(self.readout(s2))

    def freeze(self) -> None:
        """Fix the pretrained encoder (the readout head still trains with the slow predictor)."""
        self.encoder.requires_grad_(False)


SLOW_STATES = {"latent": LatentState, "jepa": JEPAState}


def _moved_state_keys(module, state_dict, prefix, *args):
    """Checkpoints written before the slow state became a part of its own kept the temporal encoder, its
    EMA target and the readout head at the top level; they load into ``state.*``."""
    for old in [k for k in state_dict if k.startswith(prefix) and
                k[len(prefix):].split(".")[0] in ("encoder", "target_encoder", "readout")]:
        state_dict[prefix + "state." + old[len(prefix):]] = state_dict.pop(old)


class SlowModel(nn.Module):
    """The slow level on top of a level-1 model with state layout ``layout``."""

    def __init__(self, layout: StateLayout, cfg: SlowConfig):
        super().__init__()
        self.layout, self.cfg = layout, cfg
        chunk_dim = cfg.chunk * layout.block_dim
        if cfg.macro == "encoder":
            self.macro_encoder: nn.Module = mlp(chunk_dim, cfg.hidden // 2, cfg.macro_dim, 2)
        else:
            self.macro_encoder = nn.Identity()
        self.state: LatentState | JEPAState = SLOW_STATES[cfg.state](layout, cfg)
        self.predictor = mlp(self.state_dim + self.macro_dim, cfg.hidden, self.state_dim, cfg.layers, zero_last=True)
        self.register_buffer("macro_mean", torch.zeros(self.macro_dim))
        self.register_buffer("macro_scale", torch.eye(self.macro_dim))
        self.register_load_state_dict_pre_hook(_moved_state_keys)

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        return self.state.state_dim

    @property
    def macro_dim(self) -> int:
        return self.cfg.macro_dim if self.cfg.macro == "encoder" else self.cfg.chunk * self.layout.block_dim

    @property
    def chunk_dim(self) -> int:
        """Values of one chunk's actions: ``K * block_dim``."""
        return self.cfg.chunk * self.layout.block_dim

    @property
    def chunk_steps(self) -> int:
        """Env steps per slow step: ``K * action_block``."""
        return self.layout.env_steps(self.cfg.chunk)

    @property
    def state_window(self) -> int:
        """Level-1 block boundaries :meth:`encode` reads (the newest last)."""
        return self.state.window

    @property
    def device(self) -> torch.device:
        return self.macro_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.macro_mean.dtype

    # --- the verbs -------------------------------------------------------------------------------
    def encode(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """Slow states ``(B, state_dim)`` from the level-1 latents of the last ``state_window`` block
        boundaries ``(B, W, latent_dim)`` and the ``(B, W - 1, block_dim)`` action blocks between them."""
        self.layout.check_boundaries(z, blocks, self.state_window)
        return self.state(z, blocks)

    def macro(self, chunks: torch.Tensor) -> torch.Tensor:
        """Macro-actions ``(..., macro_dim)`` of chunks of actions ``(..., K * block_dim)``."""
        if chunks.shape[-1] != self.chunk_dim:
            raise ValueError(f"a chunk has {self.chunk_dim} action values (K={self.cfg.chunk} blocks of "
                             f"{self.layout.block_dim}), got {chunks.shape[-1]}")
        return self.macro_encoder(chunks)

    def macro_from_plan(self, u: torch.Tensor) -> torch.Tensor:
        """Macro-actions from plan coordinates ``u (..., macro_dim)``: ``mean + u @ scale.T``."""
        return self.macro_mean.to(u) + u @ self.macro_scale.to(u).T

    def predict(self, s2: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The slow state one chunk later: ``s2 (..., state_dim)``, ``m (..., macro_dim)``."""
        return s2 + self.predictor(torch.cat([s2, m], -1))

    def rollout(self, s2: torch.Tensor, macros: torch.Tensor) -> torch.Tensor:
        """Slow states after each chunk: ``s2 (B, state_dim)``, ``macros (B, H, macro_dim)`` -> ``(B, H, state_dim)``."""
        if s2.shape[-1] != self.state_dim or macros.shape[-1] != self.macro_dim or macros.ndim != 3:
            raise ValueError(f"need s2 (B, {self.state_dim}) and macros (B, H, {self.macro_dim}), got "
                             f"{tuple(s2.shape)} and {tuple(macros.shape)}")
        states = []
        for t in range(macros.shape[1]):
            s2 = self.predict(s2, macros[:, t])
            states.append(s2)
        return torch.stack(states, 1)

    def subgoal(self, s2: torch.Tensor) -> torch.Tensor:
        """The level-1 frame latents ``(..., h, latent_dim)`` a slow state stands for."""
        return self.state.subgoal(s2)

    @torch.no_grad()
    def fit_macro_prior(self, chunks: torch.Tensor) -> None:
        """Fit the plan coordinates to the macro-actions of ``chunks (N, K * block_dim)`` (training data):
        their mean and the Cholesky factor of their covariance."""
        m = self.macro(chunks.to(self.device, self.dtype)).double()
        cov = torch.cov(m.T).reshape(self.macro_dim, self.macro_dim)
        cov = cov + 1e-6 * cov.diagonal().mean() * torch.eye(self.macro_dim, dtype=cov.dtype, device=cov.device)
        self.macro_mean.copy_(m.mean(0).to(self.dtype))
        self.macro_scale.copy_(torch.linalg.cholesky(cov).to(self.dtype))

    # --- checkpoints -----------------------------------------------------------------------------
    def config(self) -> dict:
        L = self.layout
        return {"format": SLOW_FORMAT, "kind": "slow", "slow": self.cfg.to_dict(),
                "layout": {"latent_dim": L.latent_dim, "history": L.history, "action_block": L.action_block,
                           "action_dim": L.action_dim}}

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> Path:
        return save_checkpoint(path, {**self.config(), **(extra or {})}, self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        allow_unverified: bool = False) -> "SlowModel":
        config = load_config(path)
        if config.get("kind") != "slow" or config.get("format") != SLOW_FORMAT:
            raise CheckpointError(f"{path} is no slow-level checkpoint (kind {config.get('kind')!r}, format "
                                  f"{config.get('format')!r}; expected 'slow', {SLOW_FORMAT})")
        build = lambda: cls(StateLayout(**config["layout"]), SlowConfig(**config["slow"]))  # noqa: E731
        return build_fitting(path, build, load_weights(path, allow_unverified), "a slow level").to(device).eval()


SLOW_DIR = "slow"  # a world model's slow level lives in <model>/slow


def load_slow(path: str | Path, layout: StateLayout, device: str | torch.device = "cpu",
              allow_unverified: bool = False) -> SlowModel:
    """The slow level in ``path`` (a world model's is ``<model>/slow``), checked against the level-1 layout."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no slow level at {path}; train one with `python experiments/train_slow.py "
                                f"model={path.parent} install=true`, or plan with hierarchy=false")
    slow = SlowModel.from_pretrained(path, device, allow_unverified)
    if slow.layout != layout:
        raise CheckpointError(f"{path} was trained on a level-1 layout {slow.layout}, the model has {layout}")
    return slow


ATLAS = "atlas.npz"  # training frames and their level-1 latents, for showing what a subgoal looks like


def save_atlas(slow_dir: str | Path, latents: torch.Tensor, images: np.ndarray) -> Path:
    """Write ``<slow_dir>/atlas.npz`` (with its sha256 record): ``latents (N, latent_dim)`` and the
    ``images (N, H, W, C)`` uint8 they are the level-1 latents of."""
    if len(latents) != len(images) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"need N latents and N (H, W, C) uint8 images, got {tuple(latents.shape)} and "
                         f"{images.dtype} {images.shape}")
    return write_verified(Path(slow_dir) / ATLAS, lambda tmp: np.savez_compressed(
        tmp, latents=latents.float().cpu().numpy(), images=images))


class Atlas:
    """The training frames of a slow level's atlas, looked up by level-1 latent."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not verified(path):
            raise CheckpointError(f"{path} is missing or does not match its sha256 record")
        with np.load(path) as f:
            self.latents, self.images = torch.from_numpy(f["latents"]), f["images"]

    def nearest(self, latent: torch.Tensor) -> np.ndarray:
        """The image ``(H, W, C)`` whose level-1 latent is nearest to ``latent (latent_dim,)``."""
        return self.images[int(((self.latents - latent.float().cpu()) ** 2).sum(-1).argmin())]
