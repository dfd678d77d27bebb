"""I-JEPA on images: context encoder, EMA target encoder, narrow predictor, latent L2.

The context encoder sees only the context patches; the target encoder (an
exponential moving average of the context encoder, never trained by gradients)
encodes the whole image; the predictor predicts the layer-normalised target tokens
of each target block from the context tokens. The loss is the squared error,
averaged over target blocks.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.checkpoint import load_config, load_weights
from worldmodel.jepa.masks import MaskConfig, apply_masks
from worldmodel.jepa.predictor import MaskedPredictor
from worldmodel.jepa.vit import EncoderConfig, ViTEncoder, images_to_patches, pool_tokens
from worldmodel.training.collapse import variance_covariance


@dataclass
class JEPAConfig:
    """A JEPA: encoder, predictor, targets and the ablation switches.

    Attributes:
        encoder: the ViT encoder.
        predictor_width: the predictor's width; ``0`` means as wide as the encoder
            (the wide-predictor ablation). The default is narrower than the encoder.
        predictor_depth: the predictor's blocks.
        predictor_heads: the predictor's attention heads.
        targets: ``latent`` (target-encoder tokens) or ``pixels`` (normalised pixels of
            each target patch; an ablation).
        ema: EMA target encoder with stop-gradient. ``False`` (an ablation): the
            context encoder also encodes the targets, and gradients flow through both.
        ema_start: EMA momentum at step 0; it follows a cosine schedule to ``ema_end``.
        ema_end: EMA momentum at the last step.
        vc_weight: weight of a variance-covariance regulariser (VICReg's) on each image's mean
            context token, across the batch: a guard against features that depend on the patch's
            position but not on the image, which predict the targets of a mostly static scene
            (Push-T's floor) for free (0 = off).
        masks: the masking strategy.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor_width: int = 96
    predictor_depth: int = 3
    predictor_heads: int = 3
    targets: str = "latent"
    ema: bool = True
    ema_start: float = 0.996
    ema_end: float = 1.0
    vc_weight: float = 0.0
    masks: MaskConfig = field(default_factory=MaskConfig)

    def __post_init__(self):
        if self.targets not in ("latent", "pixels"):
            raise ValueError(f"targets must be 'latent' or 'pixels', got {self.targets!r}")
        width = self.predictor_width or self.encoder.width
        if width > self.encoder.width:
            raise ValueError(f"predictor_width {width} exceeds the encoder width {self.encoder.width}")
        if not 0.0 <= self.ema_start <= self.ema_end <= 1.0:
            raise ValueError(f"need 0 <= ema_start <= ema_end <= 1, got {self.ema_start}, {self.ema_end}")
        if self.vc_weight < 0:
            raise ValueError(f"vc_weight must be >= 0, got {self.vc_weight}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JEPAConfig":
        d = dict(d)
        return cls(encoder=EncoderConfig(**d.pop("encoder")), masks=MaskConfig(**d.pop("masks")), **d)


class JEPA(nn.Module):
    """Context encoder, target encoder and predictor of an I-JEPA."""

    def __init__(self, cfg: JEPAConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg.encoder)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False) if cfg.ema else None
        p = cfg.encoder.patch_size
        out_dim = self.encoder.width if cfg.targets == "latent" else cfg.encoder.in_chans * p * p
        self.predictor = MaskedPredictor(
            in_dim=self.encoder.width,
            out_dim=out_dim,
            grid=cfg.encoder.grid,
            width=cfg.predictor_width or self.encoder.width,
            depth=cfg.predictor_depth,
            heads=cfg.predictor_heads,
        )

    def forward(self, images: torch.Tensor, context_idx: torch.Tensor, target_idx: list[torch.Tensor]) -> dict:
        """The loss terms of a batch (see :func:`jepa_loss`)."""
        return jepa_loss(self, images, context_idx, target_idx)

    @property
    def frozen_encoder(self) -> ViTEncoder:
        """The encoder to use downstream: the EMA target encoder when there is one."""
        return self.target_encoder if self.target_encoder is not None else self.encoder

    def targets(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction targets for all patches ``(B, N, D')`` and raw target tokens ``(B, N, D)``."""
        if self.cfg.ema:
            with torch.no_grad():
                tokens = self.target_encoder(images)
        else:
            tokens = self.encoder(images)  # both branches trained: the collapse-prone ablation
        if self.cfg.targets == "pixels":
            pix = images_to_patches(images, self.cfg.encoder.patch_size)
            return F.layer_norm(pix, pix.shape[-1:]), tokens
        return F.layer_norm(tokens, tokens.shape[-1:]), tokens


def jepa_loss(model: JEPA, images: torch.Tensor, context_idx: torch.Tensor, target_idx: list[torch.Tensor]) -> dict:
    """The JEPA loss of a batch and the statistics the collapse monitor reads.

    Args:
        images: ``(B, C, H, W)`` uint8.
        context_idx: ``(B, Nc)`` context patches.
        target_idx: K target blocks, each ``(B, Nt_k)``.
    Returns a dict with ``loss`` (to minimise), ``jepa`` and ``vc`` terms and
    ``pooled`` target embeddings ``(B, D)`` (detached).
    """
    target_all, tokens = model.targets(images)
    context = model.encoder(images, keep=context_idx)
    losses = []
    for idx in target_idx:
        pred = model.predictor(context, context_idx, idx)
        losses.append(F.mse_loss(pred, apply_masks(target_all, idx)))
    jepa = torch.stack(losses).mean()
    vc = variance_covariance(context.float().mean(1)) if model.cfg.vc_weight > 0 else jepa.new_zeros(())
    return {"loss": jepa + model.cfg.vc_weight * vc, "jepa": jepa, "vc": vc, "pooled": pool_tokens(tokens).detach()}


def load_encoder(path) -> ViTEncoder:
    """The frozen encoder of a pretraining checkpoint: the EMA target encoder when there is one."""
    config = load_config(path)
    if "model" not in config or "encoder" not in config["model"]:
        raise ValueError(f"{path}/config.json is not a JEPA pretraining checkpoint (no model.encoder)")
    cfg = JEPAConfig.from_dict(config["model"])
    weights = load_weights(path)
    prefix = "target_encoder." if cfg.ema else "encoder."
    encoder = ViTEncoder(cfg.encoder)
    encoder.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    return encoder.eval()
