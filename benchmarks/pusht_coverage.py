"""How well a Push-T dataset covers the T's poses: ``python benchmarks/pusht_coverage.py [key=value ...]``.

Reads (collecting it first when missing) the train split of the dataset that ``collect.py env=pusht``
(same overrides) names, and prints the share of the arena's position cells, of angle bins and of
(position, angle) cells the T visits, and how often it moves (``envs.pusht.pose_coverage``). Writes
a picture (``--out``, PNG: the T's positions as a heat map, its angles as a histogram, and a few
frames) and the numbers (JSON beside it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from envs.pusht import pose_coverage  # noqa: E402
from experiments.conf import load  # noqa: E402
from worldmodel.data import load_dataset  # noqa: E402


def picture(states: np.ndarray, frames: np.ndarray, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.2]})
    h, xe, ye = np.histogram2d(states[:, 2], states[:, 3], bins=64, range=((0, 512), (0, 512)))
    axes[0].imshow(np.log1p(h.T), origin="upper", extent=(0, 512, 512, 0), cmap="magma")
    axes[0].set_title("T position (log frames)", fontsize=8)
    axes[1].hist(np.degrees(np.mod(states[:, 4], 2 * np.pi)), bins=36, range=(0, 360), color="#4a6fa5")
    axes[1].set_title("T angle (degrees)", fontsize=8)
    axes[2].imshow(np.concatenate([np.concatenate(list(row), 1) for row in frames], 0))
    axes[2].set_title("frames", fontsize=8)
    for ax in (axes[0], axes[2]):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/pusht-coverage.png")
    parser.add_argument("overrides", nargs="*", help="collect.py overrides naming the dataset")
    args = parser.parse_args()
    cfg = load("collect", ["env=pusht", *args.overrides])
    dataset = load_dataset(cfg, splits=("train", "val"), progress=cfg.progress)
    train = dataset.split("train")
    states = np.asarray(train.states)
    stats = pose_coverage(states, np.asarray(train.frame_starts))
    pick = np.random.default_rng(0).choice(len(states), 8, replace=False)
    frames = np.asarray(train.obs)[np.sort(pick)].reshape(2, 4, *train.obs.shape[1:])
    title = (f"{dataset.path.name}\n{stats['frames']} frames: position cells {stats['position_cells_visited']}/"
             f"{stats['position_cells']}, angle bins {stats['angle_bins_visited']}/{stats['angle_bins']}, pose cells "
             f"{stats['pose_cells_visited']}/{stats['pose_cells']}; the T moves in {stats['steps_moving_block']:.0%} "
             f"of steps")
    picture(states, frames, Path(args.out), title)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"dataset": str(dataset.path), **stats}, indent=1))
    print(f"{dataset.path.name}: {stats['frames']} frames in {stats['episodes']} episodes; the T visits "
          f"{stats['position_cells_visited']}/{stats['position_cells']} position cells, "
          f"{stats['angle_bins_visited']}/{stats['angle_bins']} angle bins, {stats['pose_cells_visited']}/"
          f"{stats['pose_cells']} (position, angle) cells; it moves in {stats['steps_moving_block']:.1%} of steps "
          f"and {stats['episodes_moving_block']:.0%} of episodes carry it away from its start")
    print(f"picture: {args.out}")


if __name__ == "__main__":
    main()
