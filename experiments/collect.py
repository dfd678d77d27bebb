"""Collect an offline dataset: ``python experiments/collect.py env=reacher [data.policy.name=correlated]``.

Writes ``<data.root>/<data.name>/`` (manifest, Minari copies, fast arrays) atomically and prints
its path.
"""

from __future__ import annotations

from omegaconf import DictConfig

from experiments.conf import entry_point, to_object
from worldmodel.data import CollectConfig, build_dataset


@entry_point("collect")
def main(cfg: DictConfig) -> None:
    config: CollectConfig = to_object(cfg)
    path = build_dataset(config, progress=config.progress)
    print(f"dataset written to {path}")


if __name__ == "__main__":
    main()
