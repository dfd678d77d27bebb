import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402

from envs import EnvConfig  # noqa: E402
from worldmodel.data import CollectConfig, build_dataset, open_dataset  # noqa: E402


def tiny_collect_config(root, **overrides) -> CollectConfig:
    settings = dict(
        env=EnvConfig(episode_steps=20),
        train_episodes=6,
        val_episodes=2,
        heldout_episodes=2,
        num_envs=2,
        root=str(root),
        progress=False,
    )
    settings.update(overrides)
    return CollectConfig(**settings)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A real (tiny) Reacher dataset, collected once per test session with 2 subprocess envs."""
    root = tmp_path_factory.mktemp("data")
    return open_dataset(build_dataset(tiny_collect_config(root)))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """60 training and 10 validation episodes of 20 steps: enough for a predictor to generalise."""
    root = tmp_path_factory.mktemp("small")
    return open_dataset(build_dataset(tiny_collect_config(root, train_episodes=60, val_episodes=10, heldout_episodes=0,
                                                          minari=False)))
