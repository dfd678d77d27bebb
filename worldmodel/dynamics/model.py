"""The latent world model: a frame encoder, a state layout and a predictor, composed.

Glossary (used in every name of the repository):

- observation ``obs``: an image ``(C, H, W)`` uint8 (the env gives ``(H, W, C)``);
- features ``x``: what a frame encoder computes from it and keeps fixed while the world
  model trains (the frozen JEPA's pooled, projected tokens; or the image itself);
- frame latent ``z``: the trained head's vector for one frame (``latent_dim``);
- state ``s``: the frame latents of the last ``history`` block boundaries and the action
  blocks between them (:class:`StateLayout`);
- plan: a sequence of action blocks chosen by a planner.

The model speaks three verbs: ``encode(frames, actions) -> s``, ``predict(s, a) -> s_next``
and ``rollout(s0, actions) -> states``. The predictor is residual on the newest latent,
``z_{t+k} = z_t + f([s_t, A_t])``; the rest of the next state is a shift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from worldmodel.checkpoint import CheckpointError, build_fitting, load_config, load_weights, save_checkpoint
from worldmodel.dynamics.frames import FRAME_ENCODERS, FrameEncoder, build_frame_encoder
from worldmodel.dynamics.layout import StateLayout
from worldmodel.dynamics.predictor import BlockPredictor, inverse_head
from worldmodel.jepa.vit import EncoderConfig, ViTEncoder

FORMAT = 2  # config.json "format" of world-model checkpoints (1: the flat LatentWorldModel of before)


@dataclass
class DynamicsConfig:
    """The latent state and the action-conditioned predictor.

    Attributes:
        encoder: ``frozen`` (the pretrained ViT's features and a trained MLP head),
            ``pixels`` (the image average-pooled to ``pool x pool`` pixels and the same
            head, trained end to end) or ``conv`` (a conv net trained end to end from
            pixels; ``pool``, ``project_dim`` and ``standardize`` do not apply).
        pool: side of the grid the patch tokens (``pixels``: the image) are average-pooled
            onto (1 = one vector per image, the patch grid's side = every token).
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
        head: the trained head of ``frozen`` and ``pixels``: ``mlp`` (the flattened features) or ``keypoints``
            (convolutions over the feature grid, each channel's soft-argmax position, then the MLP: where things
            are, at sub-cell precision, the same wherever they are; needs ``project_dim = 0``).
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
    head: str = "mlp"
    head_hidden: int = 512
    conv_width: int = 32
    dropout: float = 0.0
    inverse: bool = False

    def __post_init__(self):
        if self.encoder not in FRAME_ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; expected one of {list(FRAME_ENCODERS)}")
        if self.encoder == "conv" and (self.latent_dim < 1 or self.conv_width % 8):
            raise ValueError(f"the conv encoder needs latent_dim >= 1 and conv_width a multiple of 8, got "
                             f"{self.latent_dim}, {self.conv_width}")
        if self.head not in ("mlp", "keypoints"):
            raise ValueError(f"head must be 'mlp' or 'keypoints', got {self.head!r}")
        if self.head == "keypoints" and (self.encoder == "conv" or self.project_dim or self.latent_dim < 1
                                         or self.conv_width % 8):
            raise ValueError(f"head=keypoints convolves the frozen or pixels encoder's pooled grid: it needs "
                             f"project_dim=0, latent_dim >= 1 and conv_width a multiple of 8, got encoder="
                             f"{self.encoder}, project_dim={self.project_dim}, latent_dim={self.latent_dim}, "
                             f"conv_width={self.conv_width}")
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


class WorldModel(nn.Module):
    """``encode(frames, actions) -> s``, ``predict(s, a) -> s_next``, ``rollout(s0, actions) -> states``.

    Args:
        encoder: observation -> features -> frame latent.
        predictor: the latent's change over one action block.
        layout: what a state holds.
        cfg: the settings it was built from (saved with it).
        inverse: optional inverse-dynamics head (a training signal only).
    """

    def __init__(self, encoder: FrameEncoder, predictor: BlockPredictor, layout: StateLayout, cfg: DynamicsConfig,
                 inverse: nn.Module | None = None):
        super().__init__()
        if encoder.latent_dim != layout.latent_dim:
            raise ValueError(f"the encoder's latents have {encoder.latent_dim} dims, the layout {layout.latent_dim}")
        self.encoder, self.predictor, self.layout, self.cfg = encoder, predictor, layout, cfg
        self.inverse = inverse

    @classmethod
    def build(cls, cfg: DynamicsConfig, action_dim: int, image_shape: tuple[int, int, int] | None = None,
              vit: ViTEncoder | None = None) -> "WorldModel":
        """A fresh world model (initialised from the global torch generator): the frame encoder
        ``cfg.encoder`` (``frozen`` takes the pretrained ``vit``, ``conv`` the ``image_shape``)."""
        encoder = build_frame_encoder(cfg, image_shape, vit)
        layout = StateLayout(encoder.latent_dim, cfg.history, cfg.action_block, action_dim)
        predictor = BlockPredictor(layout, cfg.hidden, cfg.depth, cfg.dropout)
        inverse = inverse_head(layout, cfg.hidden) if cfg.inverse else None
        return cls(encoder, predictor, layout, cfg, inverse)

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return self.layout.action_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.encoder.image_shape

    @property
    def latent_dim(self) -> int:
        return self.layout.latent_dim

    @property
    def history(self) -> int:
        return self.layout.history

    @property
    def block_dim(self) -> int:
        return self.layout.block_dim

    @property
    def state_dim(self) -> int:
        return self.layout.state_dim

    @property
    def device(self) -> torch.device:
        return next(self.predictor.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.predictor.parameters()).dtype

    # --- the verbs -------------------------------------------------------------------------------
    @torch.no_grad()
    def latents(self, obs: torch.Tensor) -> torch.Tensor:
        """Frame latents ``(..., latent_dim)`` (EMA head) of images ``(..., C, H, W)`` uint8."""
        x = self.encoder.features(obs.flatten(0, -4))
        return self.encoder.latents(x, target=True).unflatten(0, obs.shape[:-3])

    def encode(self, frames: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        """States ``(B, state_dim)`` of images ``(B, h, C, H, W)`` uint8 taken one action block
        apart, and the ``(h - 1) * k`` actions ``(B, (h-1)*k, A)`` taken between them.

        One image ``(B, C, H, W)`` without actions stands for a still scene (the image
        repeated, zero torques).
        """
        L = self.layout
        if frames.ndim == 4:
            frames = frames.unsqueeze(1).expand(-1, L.history, -1, -1, -1)
        if frames.ndim != 5 or frames.shape[1] != L.history:
            raise ValueError(f"frames must be (B, {L.history}, C, H, W) or (B, C, H, W), got {tuple(frames.shape)}")
        B = frames.shape[0]
        if actions is None:
            actions = torch.zeros((B, L.span, L.action_dim), device=frames.device, dtype=self.dtype)
        if actions.shape != (B, L.span, L.action_dim):
            raise ValueError(f"actions must be (B, {L.span}, {L.action_dim}), got {tuple(actions.shape)}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 images (0-255), got {frames.dtype}; convert floats in [0, 1] "
                             f"with (x * 255).round().to(torch.uint8)")
        require_finite("actions", actions)
        z = self.latents(frames)
        return L.compose(z, L.blocks(actions).to(z.dtype))

    def predict(self, s: torch.Tensor, a: torch.Tensor, check_inputs: bool = True) -> torch.Tensor:
        """Next state: ``s (..., state_dim)``, ``a (..., block_dim)`` -> ``(..., state_dim)``.

        ``check_inputs`` refuses wrong sizes and non-finite values (one device sync); a caller in a
        tight loop over inputs it made itself (a planner's candidates) may turn it off.
        """
        if check_inputs:
            self._check_states("s", s)
            if a.shape[-1] != self.layout.block_dim:
                raise ValueError(f"action block must have {self.layout.block_dim} values (last axis), got {a.shape[-1]}")
            if s.shape[:-1] != a.shape[:-1]:
                raise ValueError(f"predict needs one action block per state: s {tuple(s.shape)} and a {tuple(a.shape)} "
                                 f"differ before the last axis")
            require_finite("a", a)
        new = self.layout.newest(s) + self.predictor(s, a)
        return self.layout.shift(s, new, a)

    def rollout(self, s0: torch.Tensor, actions: torch.Tensor, check_inputs: bool = True) -> torch.Tensor:
        """States after each block: ``s0 (B, state_dim)``, ``actions (B, H, block_dim)`` -> ``(B, H, state_dim)``
        (``check_inputs`` as in :meth:`predict`, done once for the whole rollout)."""
        if check_inputs:
            self._check_states("s0", s0)
            if (actions.ndim != s0.ndim + 1 or actions.shape[-1] != self.layout.block_dim
                    or actions.shape[:-2] != s0.shape[:-1]):
                raise ValueError(f"actions must be (B, H, {self.layout.block_dim}) for s0 {tuple(s0.shape)}, "
                                 f"got {tuple(actions.shape)}")
            require_finite("actions", actions)
        states, s = [], s0
        for t in range(actions.shape[1]):
            s = self.predict(s, actions[:, t], check_inputs=False)
            states.append(s)
        return torch.stack(states, dim=1)

    def _check_states(self, name: str, s: torch.Tensor) -> None:
        if s.shape[-1] != self.state_dim:
            raise ValueError(f"{name} must be states (..., {self.state_dim}), got {tuple(s.shape)}")
        require_finite(name, s)

    def newest(self, s: torch.Tensor) -> torch.Tensor:
        """The newest frame latent ``(..., latent_dim)`` of states ``(..., state_dim)``."""
        return self.layout.newest(s)

    def frame_latents(self, s: torch.Tensor) -> torch.Tensor:
        """The frame latents ``(..., history, latent_dim)`` of states, oldest first."""
        return self.layout.frame_latents(s)

    # --- checkpoints -----------------------------------------------------------------------------
    def config(self) -> dict:
        """What :meth:`from_pretrained` needs to rebuild this model."""
        return {"format": FORMAT, "encoder": self.encoder.config(),
                "dynamics": self.cfg.to_dict(), "action_dim": self.action_dim, "image_shape": list(self.image_shape)}

    def save_pretrained(self, path: str | Path, extra: dict | None = None, dtype: torch.dtype | None = None,
                        keep: tuple[str, ...] = ()) -> Path:
        """Write a checkpoint directory (``config.json`` + ``model.safetensors``, atomically); floating
        weights stored as ``dtype`` when given (loading casts them back), except those whose names start
        with a prefix in ``keep`` (e.g. ``("predictor.",)``: a planner's outcomes follow its every bit)."""
        weights = {k: v.to(dtype) if dtype is not None and v.is_floating_point() and not k.startswith(keep) else v
                   for k, v in self.state_dict().items()}
        config = {**self.config(), **(extra or {})}
        if dtype is not None:
            config["stored_dtype"] = str(dtype).removeprefix("torch.")
            if keep:
                config["stored_full_precision"] = list(keep)
        return save_checkpoint(path, config, weights)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        allow_unverified: bool = False) -> "WorldModel":
        """The world model of a checkpoint directory (written by training or :meth:`save_pretrained`),
        in eval mode, fp32, on ``device`` (``allow_unverified``: see :func:`load_weights`)."""
        config = load_config(path)
        if "dynamics" not in config:
            what = (f"a {config['kind']!r} checkpoint" if "kind" in config else "a JEPA pretraining checkpoint"
                    if "encoder" in config.get("model", {}) else "no world model")
            raise CheckpointError(f"{path} is {what}, not a world model: pass a directory written by "
                                  f"train_dynamics.py or build_default_model.py (models/<env>)")
        weights = load_weights(path, allow_unverified)
        if config.get("format", 1) == 1:
            weights = upgrade_v1_weights(config, weights)
        elif config["format"] != FORMAT:
            raise CheckpointError(f"{path}: world-model format {config['format']!r}; this code reads 1 and {FORMAT}")

        def build():
            vit = ViTEncoder(EncoderConfig(**config["encoder"])) if config["encoder"] is not None else None
            return cls.build(DynamicsConfig(**config["dynamics"]), config["action_dim"],
                             tuple(config["image_shape"]) if config.get("image_shape") else None, vit)

        return build_fitting(path, build, weights, "the world model").to(device).eval()


def require_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` when ``x`` holds NaN or inf."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf) of {x.numel()}")


def upgrade_v1_weights(config: dict, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of a format-1 checkpoint (one flat module) renamed to the composed model's."""
    frozen = config["dynamics"].get("encoder", "frozen") == "frozen"
    renames = [("encoder.", "encoder.vit."), ("pca_", "encoder.pca_"), ("latent_mean", "encoder.feature_mean"),
               ("latent_std", "encoder.feature_std"), ("head.", "encoder.head."),
               ("target_head.", "encoder.target_head."), ("f.", "predictor.net."), ("inverse.", "inverse.")]
    out = {}
    for key, value in weights.items():
        if not frozen and key in ("latent_mean", "latent_std"):
            continue  # the conv encoder had empty statistics
        old, new = next(((o, n) for o, n in renames if key.startswith(o)), (None, None))
        if old is None:
            raise CheckpointError(f"format-1 checkpoint has an unknown weight {key!r}")
        out[new + key[len(old):]] = value
    return out
