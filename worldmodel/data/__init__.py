"""Offline data: behaviour policies, collection, on-disk datasets and training windows."""

from worldmodel.data.collect import build_dataset, collect_episodes, ensure_dataset, episode_seeds, load_dataset
from worldmodel.data.config import CollectConfig, DataConfig, DataSource, PolicyConfig
from worldmodel.data.episodes import Episodes
from worldmodel.data.policies import CorrelatedPolicy, MixedPolicy, UniformPolicy, make_policy
from worldmodel.data.storage import Dataset, DatasetError, open_dataset, write_dataset
from worldmodel.data.windows import Window, WindowSampler

__all__ = [
    "CollectConfig",
    "CorrelatedPolicy",
    "DataConfig",
    "DataSource",
    "MixedPolicy",
    "Dataset",
    "DatasetError",
    "Episodes",
    "PolicyConfig",
    "UniformPolicy",
    "Window",
    "WindowSampler",
    "build_dataset",
    "collect_episodes",
    "ensure_dataset",
    "episode_seeds",
    "load_dataset",
    "make_policy",
    "open_dataset",
    "write_dataset",
]
