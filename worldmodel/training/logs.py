"""A run's log: rows of scalars written as CSV (atomically) and plotted as PNG panels."""

from __future__ import annotations

import csv
import os
from pathlib import Path


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (dicts with the same keys, in order) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_log(rows: list[dict], path: Path, panels: list[tuple[str, list[str], bool]]) -> Path:
    """One panel per ``(title, keys, log_scale)``: each key of ``rows`` against ``step``; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.5), squeeze=False)
    for ax, (title, keys, log_scale) in zip(axes[0], panels):
        for key in keys:
            ax.plot(steps, [r[key] for r in rows], label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if log_scale:
            ax.set_yscale("log")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
