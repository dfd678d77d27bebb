"""Collection and data-loading throughput; how far each angle moves under each policy.

    python benchmarks/collect.py [--env reacher] [--episodes 40] [--out results/benchmarks/collect.json]

Prints a table and writes JSON. Numbers on a shared 2-core machine vary by about
30 % from run to run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import envs
from experiments.provenance import write_json
from worldmodel.data import CollectConfig, DataConfig, PolicyConfig, WindowSampler, build_dataset, open_dataset
from worldmodel.data.collect import collect_episodes, episode_seeds, single_env_rate


def collection_rate(env: str, episodes: int, steps: int, num_envs: int, antialias: bool) -> float:
    """Frames/s of ``collect_episodes`` including subprocess start-up."""
    start = time.perf_counter()
    collect_episodes(
        env,
        PolicyConfig().build(),
        episode_seeds(0, episodes),
        steps,
        env_kwargs={"image_size": 64, "antialias": antialias},
        num_envs=num_envs,
        progress=False,
    )
    return episodes * (steps + 1) / (time.perf_counter() - start)


def angle_motion(env: str, policy: str, episodes: int, horizon: int = 25) -> dict:
    """Mean |angle[t + horizon] - angle[t]| (rad) of every angle the env declares, per dimension, over
    all start steps.

    ``raw`` counts whole turns; ``wrapped`` is the distance modulo 2*pi (at most pi; pi/2 means
    unrelated angles).
    """
    spec = envs.get_spec(env)
    data = collect_episodes(
        env, PolicyConfig(name=policy).build(), episode_seeds(1, episodes), 100, num_envs=2, progress=False
    )
    out = {"horizon_steps": horizon}
    for q in (q for q in spec.quantities if q.kind == "angle"):
        d = np.concatenate([(a[horizon:] - a[:-horizon]) for a in (data.episode(e)[f"physics.{q.key}"]
                                                                     for e in range(data.num_episodes))])
        out[q.key] = {"raw_rad": np.abs(d).mean(0).tolist(), "wrapped_rad": np.abs(envs.wrap_angle(d)).mean(0).tolist()}
    return out


def read_rates(env: str, episodes: int, window: int = 4, batch: int = 64, iters: int = 30) -> dict:
    """Random training windows per second: memory-mapped arrays vs the Minari (HDF5) copy."""
    import minari

    root = Path(tempfile.mkdtemp())
    try:
        data = DataConfig(train_episodes=episodes, val_episodes=0, heldout_episodes=0, root=str(root))
        cfg = CollectConfig(env=envs.EnvConfig(name=env, episode_steps=100), data=data)
        ds = open_dataset(build_dataset(cfg, progress=False))
        sampler = WindowSampler(ds.split("train"), window)
        g = torch.Generator().manual_seed(0)
        sampler.sample(batch, g)
        t = time.perf_counter()
        for _ in range(iters):
            sampler.sample(batch, g)
        npy = batch * iters / (time.perf_counter() - t)

        md = minari.MinariDataset(ds.minari_path("train"))
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for _ in range(max(1, iters // 10)):
            # Minari reads whole episodes; the windows are cut out afterwards.
            eps = [md[int(i)] for i in rng.integers(0, md.total_episodes, batch)]
            _ = [ep.observations[s : s + window] for ep, s in zip(eps, rng.integers(0, 100 - window, batch))]
        hdf5 = batch * max(1, iters // 10) / (time.perf_counter() - t)
        return {"window": window, "batch": batch, "npy_windows_per_s": npy, "minari_windows_per_s": hdf5}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="reacher", choices=envs.env_names())
    parser.add_argument("--episodes", type=int, default=40, help="episodes per throughput measurement")
    parser.add_argument("--out", default="results/benchmarks/collect.json")
    args = parser.parse_args()

    env = args.env
    result: dict = {"env": env, "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    result["single_env_fps"] = {
        "antialias": single_env_rate(env, 1000, {"antialias": True}),
        "no_antialias": single_env_rate(env, 1000, {"antialias": False}),
    }
    result["collection_fps"] = {
        f"num_envs={n},antialias={aa}": collection_rate(env, args.episodes, 100, n, aa)
        for aa in (True, False)
        for n in (1, 2, 3)
    }
    result["angle_motion_25_steps"] = {p: angle_motion(env, p, args.episodes) for p in ("uniform", "correlated")}
    result["reads"] = read_rates(env, args.episodes)

    print(f"device: {result['device']}")
    for k, v in result["single_env_fps"].items():
        print(f"single env step+render 64x64, {k:<13}: {v:7.0f} frames/s")
    for k, v in result["collection_fps"].items():
        print(f"collect_episodes {k:<27}: {v:7.0f} frames/s")
    for p, m in result["angle_motion_25_steps"].items():
        for key, v in m.items():
            if key != "horizon_steps":
                print(f"mean |{key} change| over 25 steps, {p:<10}: " + ", ".join(
                    f"{r:.2f} rad ({w:.2f} mod 2pi)" for r, w in zip(v["raw_rad"], v["wrapped_rad"])))
    r = result["reads"]
    print(f"random windows (T={r['window']}, batch {r['batch']}): npy memmap {r['npy_windows_per_s']:.0f}/s, "
          f"Minari HDF5 {r['minari_windows_per_s']:.0f}/s")
    out = write_json(args.out, result)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
