import gc
import os
import subprocess

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402

from envs import EnvConfig  # noqa: E402
from worldmodel.data import CollectConfig, DataConfig, build_dataset, open_dataset  # noqa: E402


def dataset_args(dataset) -> list[str]:
    """Command-line settings that name ``dataset`` (a tiny_dataset-like fixture) by its content."""
    s = dataset.manifest["splits"]
    count = lambda split: s.get(split, {}).get("episodes", 0)  # noqa: E731
    return [f"data.root={dataset.path.parent}", f"env.episode_steps={dataset.manifest['env']['episode_steps']}",
            f"data.train_episodes={count('train')}", f"data.val_episodes={count('val')}",
            f"data.heldout_episodes={count('heldout')}"]


def tiny_collect_config(root, env: EnvConfig | None = None, **overrides) -> CollectConfig:
    """A tiny Reacher dataset's settings (``env``: 20-step episodes), ``overrides`` of its ``DataConfig``."""
    settings = dict(train_episodes=6, val_episodes=2, heldout_episodes=2, num_envs=2, root=str(root))
    settings.update(overrides)
    return CollectConfig(env=env or EnvConfig(episode_steps=20), data=DataConfig(**settings), progress=False)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A real (tiny) Reacher dataset, collected once per pytest run with 2 subprocess envs."""
    root = tmp_path_factory.mktemp("data")
    return open_dataset(build_dataset(tiny_collect_config(root), progress=False))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """60 training and 10 validation episodes of 20 steps: enough for a predictor to generalise."""
    root = tmp_path_factory.mktemp("small")
    return open_dataset(build_dataset(tiny_collect_config(root, train_episodes=60, val_episodes=10, heldout_episodes=0,
                                                          minari=False), progress=False))


def mounted_tmpfs(path, options: str):
    """A tmpfs mounted at ``path`` with ``options`` for the test's duration (skipped where mounting is not allowed)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        gc.collect()  # a file torch.save left open when the disk filled (held by the exception's traceback)
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB disk (tmpfs) at ``tmp_path/disk``."""
    yield from mounted_tmpfs(tmp_path / "disk", "size=1m")


@pytest.fixture
def read_only_disk(tmp_path):
    """A real read-only disk (tmpfs) at ``tmp_path/ro``: not even root writes to it."""
    yield from mounted_tmpfs(tmp_path / "ro", "ro,size=1m")
