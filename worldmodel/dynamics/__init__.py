"""Latent dynamics: frame encoders, the state layout, the predictor, the world model and its training."""

from worldmodel.data.features import FeatureCache
from worldmodel.dynamics.frames import (
    FRAME_ENCODERS,
    ConvFrames,
    FrameEncoder,
    FrozenJEPAFrames,
    ImageTable,
    PixelFrames,
    ProjectedFrames,
)
from worldmodel.dynamics.layout import StateLayout
from worldmodel.dynamics.model import DynamicsConfig, WorldModel
from worldmodel.dynamics.objective import (
    DynamicsObjective,
    DynamicsTrainConfig,
    WindowBatches,
    dynamics_losses,
    validate,
)
from worldmodel.dynamics.predictor import BlockPredictor

__all__ = [
    "FRAME_ENCODERS",
    "BlockPredictor",
    "ConvFrames",
    "DynamicsConfig",
    "DynamicsObjective",
    "DynamicsTrainConfig",
    "FeatureCache",
    "FrameEncoder",
    "FrozenJEPAFrames",
    "ImageTable",
    "PixelFrames",
    "ProjectedFrames",
    "StateLayout",
    "WindowBatches",
    "WorldModel",
    "dynamics_losses",
    "validate",
]
