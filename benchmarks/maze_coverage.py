"""How well a maze dataset covers the maze: ``python benchmarks/maze_coverage.py [key=value ...]``.

Reads the train split of the dataset that ``collect.py env=pointmaze`` (same overrides) names,
counts the frames in each free cell, and prints the fraction of free cells visited, the
least- and most-visited cells relative to the mean, and the share of episodes that cross into
another cell. Writes a heat map of the ball's positions (``--out``, PNG) and the numbers (JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from envs.pointmaze import ball_positions, cell_coverage, layout_grid  # noqa: E402
from experiments.conf import load  # noqa: E402
from worldmodel.data import open_dataset  # noqa: E402


def heat_map(xy: np.ndarray, walls: np.ndarray, path: Path, title: str) -> None:
    rows, cols = walls.shape
    fig, ax = plt.subplots(figsize=(4.2, 4.2 * rows / cols))
    h, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=(cols * 6, rows * 6),
                               range=((-cols / 2, cols / 2), (-rows / 2, rows / 2)))
    ax.imshow(np.log1p(h.T), origin="lower", extent=(xe[0], xe[-1], ye[0], ye[-1]), cmap="magma")
    for i, j in zip(*np.nonzero(walls)):
        ax.add_patch(plt.Rectangle((j - cols / 2, rows / 2 - i - 1), 1, 1, color="#8a8a8a"))
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/maze-coverage.png")
    parser.add_argument("overrides", nargs="*", help="collect.py overrides naming the dataset")
    args = parser.parse_args()
    cfg = load("collect", ["env=pointmaze", *args.overrides])
    dataset = open_dataset(Path(cfg.data.root) / cfg.data.dataset_name(cfg.env))
    train = dataset.split("train")
    walls = layout_grid(cfg.env.maze)
    xy = ball_positions(train.physics)
    stats = cell_coverage(xy, np.asarray(train.frame_starts), walls)
    title = (f"{dataset.path.name}\n{stats['frames']} frames: {stats['cells_visited']}/{stats['free_cells']} cells, "
             f"least visited {stats['min_over_mean']:.2f} x mean")
    heat_map(xy, walls, Path(args.out), title)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"dataset": str(dataset.path), **stats}, indent=1))
    print(f"{dataset.path.name}: {stats['frames']} frames, {stats['cells_visited']}/{stats['free_cells']} free cells "
          f"visited ({stats['fraction_visited']:.0%}); least visited {stats['min_over_mean']:.2f} x mean, most "
          f"{stats['max_over_mean']:.2f} x mean; {stats['mean_cells_per_episode']:.1f} cells per episode")
    print(f"heat map: {args.out}")


if __name__ == "__main__":
    main()
