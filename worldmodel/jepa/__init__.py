"""JEPA pretraining of the image encoder (I-JEPA): ViT, block masks, narrow predictor, EMA target."""

from worldmodel.jepa.masks import MaskConfig, apply_masks, sample_masks
from worldmodel.jepa.model import JEPA, JEPAConfig, jepa_loss, load_encoder
from worldmodel.jepa.objective import JEPATrainConfig, PretrainObjective, make_optimizer
from worldmodel.jepa.probe import linear_probe, pooled_features
from worldmodel.jepa.vit import SIZES, EncoderConfig, ViTEncoder, normalize_images

__all__ = [
    "SIZES",
    "EncoderConfig",
    "JEPA",
    "JEPAConfig",
    "JEPATrainConfig",
    "MaskConfig",
    "PretrainObjective",
    "ViTEncoder",
    "apply_masks",
    "jepa_loss",
    "linear_probe",
    "load_encoder",
    "make_optimizer",
    "normalize_images",
    "pooled_features",
    "sample_masks",
]
