"""Level 2 of the world model: a slow predictor over chunks of level-1 steps, its macro-action
encoder, its (optionally JEPA-pretrained) slow state, and their training."""

from worldmodel.hierarchy.model import (ATLAS, SLOW_DIR, Atlas, JEPAState, LatentState, SlowConfig, SlowModel,
                                        TemporalEncoder, TemporalPredictor, load_slow, save_atlas)
from worldmodel.hierarchy.objective import (
    SlowObjective,
    SlowTrainConfig,
    SlowWindows,
    TemporalJEPAObjective,
    slow_losses,
    time_masks,
    validate_slow,
)

__all__ = [
    "ATLAS",
    "Atlas",
    "save_atlas",
    "SLOW_DIR",
    "JEPAState",
    "LatentState",
    "SlowConfig",
    "SlowModel",
    "SlowObjective",
    "SlowTrainConfig",
    "SlowWindows",
    "TemporalEncoder",
    "TemporalJEPAObjective",
    "TemporalPredictor",
    "load_slow",
    "slow_losses",
    "time_masks",
    "validate_slow",
]
