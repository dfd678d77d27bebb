"""What the slow level knows: ``python experiments/probe_slow.py env=pointmaze [slow_dir=DIR] [train_slow overrides]``.

Probes (linear and MLP) fitted on the slow states at chunk boundaries of training windows read
the dataset's recorded quantities (the maze: ball xy, velocity, cell; with the maze, also the
shortest-path distance in cells to a fixed cell, the first free cell) and are scored on
validation windows: on the encoded slow states, and on the slow level's open-loop rollouts
(the recorded actions' macro-actions) after 1..R chunks. Writes ``<out>/probe_slow.json``,
``.md`` and ``probe_slow.png`` (median error per chunk of rollout) under ``probe_out``
(default ``results/probe_slow``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import envs
from experiments.conf import load
from experiments.provenance import write_json
from experiments.train_slow import level1_latents
from worldmodel.checkpoint import WEIGHTS
from worldmodel.data import load_dataset
from worldmodel.dynamics import WorldModel
from worldmodel.files import file_sha256
from worldmodel.hierarchy import SLOW_DIR, SlowWindows, load_slow
from worldmodel.hierarchy.objective import chunk_windows
from worldmodel.probes import LinearProbe, MLPProbe, r2_score


def boundary_frames(windows: SlowWindows, index: np.ndarray) -> np.ndarray:
    frames, _ = windows.sampler.rows(index)
    return frames[:, windows.offsets]


def targets_of(split, frames: np.ndarray, env_cfg) -> dict[str, np.ndarray]:
    """Recorded quantities at ``frames (N,)`` and the env's derived ones (the maze: the shortest-path
    distance to a fixed cell)."""
    out = {k: np.asarray(v[frames], np.float64).reshape(len(frames), -1) for k, v in split.physics.items()}
    derived = envs.get_spec(env_cfg.name).derived_quantities
    return {**out, **(derived(out, env_cfg.env_kwargs()) if derived else {})}


@torch.no_grad()
def slow_states(slow, windows: SlowWindows, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True slow states ``(N, R+1, d2)`` at the chunk boundaries of windows ``index`` and the open-loop
    predicted ones ``(N, R, d2)`` from the first."""
    z, a = windows.get(index)
    zs, bs, chunks, _ = chunk_windows(slow, z.to(slow.device), a.to(slow.device))
    B, R1 = zs.shape[:2]
    s2 = slow.encode(zs.flatten(0, 1), bs.flatten(0, 1)).unflatten(0, (B, R1))
    pred = slow.rollout(s2[:, 0], slow.macro(chunks))
    return s2.float().cpu().numpy(), pred.float().cpu().numpy()


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv if a.startswith(("slow_dir=", "probe_out=", "chunks=", "windows=")))
    cfg = load("train_slow", [a for a in argv if a.split("=", 1)[0] not in opts])
    out = Path(opts.get("probe_out", "results/probe_slow"))
    R, n = int(opts.get("chunks", 4)), int(opts.get("windows", 4000))
    model = WorldModel.from_pretrained(cfg.model)
    slow_dir = opts.get("slow_dir", Path(cfg.model) / SLOW_DIR)
    slow = load_slow(slow_dir, model.layout)
    dataset = load_dataset(cfg)
    L, W, K = model.layout, slow.state_window, slow.cfg.chunk
    data = {}
    for split, count in (("train", 4 * n), ("val", n)):
        episodes = dataset.split(split)
        windows = SlowWindows(slow, episodes, level1_latents(model, dataset, split, cfg.feature_cache, False),
                              L.chunk_window(W, K, R))
        index = np.random.default_rng(0 if split == "train" else 1).choice(len(windows.sampler), count)
        frames = boundary_frames(windows, index)[:, L.chunk_ends(W, K, R)]  # (N, R+1) the chunk boundaries
        true, pred = slow_states(slow, windows, index)
        data[split] = (true, pred, {k: v.reshape(count, R + 1, -1) for k, v in
                                    targets_of(episodes, frames.ravel(), cfg.env).items()})
    true_tr, _, y_tr = data["train"]
    true_va, pred_va, y_va = data["val"]
    rows = {}
    for name, y in y_tr.items():
        for kind, probe in (("linear", LinearProbe()), ("mlp", MLPProbe(steps=2000))):
            probe.fit(true_tr.reshape(-1, true_tr.shape[-1]), y.reshape(-1, y.shape[-1]))
            truth = y_va[name]  # (N, R+1, k)
            on_true = probe.predict(true_va.reshape(-1, true_va.shape[-1])).reshape(truth.shape)
            on_pred = probe.predict(pred_va.reshape(-1, pred_va.shape[-1])).reshape(truth[:, 1:].shape)
            err = lambda p, t: float(np.median(np.linalg.norm(p - t, axis=-1)))  # noqa: E731
            rows[f"{name} ({kind})"] = {
                "r2": float(r2_score(truth.reshape(-1, truth.shape[-1]), on_true.reshape(-1, truth.shape[-1])).mean()),
                "median_error": err(on_true, truth),
                "median_error_true_by_chunk": [err(on_true[:, j], truth[:, j]) for j in range(1, R + 1)],
                "median_error_rollout_by_chunk": [err(on_pred[:, j - 1], truth[:, j]) for j in range(1, R + 1)],
            }
    result = {"model": cfg.model, "model_weights_sha256": file_sha256(Path(cfg.model) / WEIGHTS),
              "slow_weights_sha256": file_sha256(Path(slow_dir) / WEIGHTS), "slow": slow.config(), "chunks": R,
              "windows": {"train": 4 * n, "val": n},
              "chunk_env_steps": slow.chunk_steps, "probes": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "probe_slow.json", result)
    lines = [f"Slow-level probes ({slow.cfg.state} state, K={K}: {slow.chunk_steps} env steps per chunk), {n} "
             f"validation windows; median error (units of each quantity) on encoded slow states and after j chunks "
             f"of open-loop slow rollout.", "",
             "| quantity (probe) | R^2 | median error | " + " | ".join(f"rollout {j}" for j in range(1, R + 1)) + " |",
             "|---|---|---|" + "---|" * R]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['r2']:.3f} | {r['median_error']:.3f} | "
                     + " | ".join(f"{e:.3f}" for e in r["median_error_rollout_by_chunk"]) + " |")
    (out / "probe_slow.md").write_text("\n".join(lines) + "\n")
    plot(rows, R, slow.chunk_steps, out / "probe_slow.png")
    print("\n".join(lines))


def plot(rows: dict, R: int, steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(1, R + 1) * steps
    for name, r in rows.items():
        if name.endswith("(mlp)"):
            line, = ax.plot(x, r["median_error_rollout_by_chunk"], marker="o", label=f"{name}: slow rollout")
            ax.plot(x, r["median_error_true_by_chunk"], ls="--", color=line.get_color(), label=f"{name}: encoded")
    ax.set_xlabel("env steps of open-loop slow rollout")
    ax.set_ylabel("median probe error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
