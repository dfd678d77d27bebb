"""Collect an offline dataset: ``python experiments/collect.py env=reacher [policy=correlated]``.

Writes ``<root>/<name>/`` (manifest, Minari copies, fast arrays) atomically and prints
its path and counts.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from experiments.conf import CONFIG_DIR, to_object
from worldmodel.data import CollectConfig, build_dataset


@hydra.main(config_path=CONFIG_DIR, config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config: CollectConfig = to_object(cfg)
    path = build_dataset(config)
    print(f"dataset written to {path}")


if __name__ == "__main__":
    main()
