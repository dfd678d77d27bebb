"""How precisely frames of a given size pin down the arm: a supervised CNN reads the joint
angles from rendered frames, per image size, and the held-out errors say which resolution the
0.05 rad success test needs (docs/protocol.md, "How precisely frames pin down the arm").

    python benchmarks/resolution.py [--env dmc_reacher] [--sizes 64 96] [--frames 12000] [--steps 3000]

Frames come from random resets (every env draws its start pose at random); the same states are
rendered at every size. Prints and writes JSON (``results/benchmarks/resolution-<env>.json``):
median absolute error per joint and the fraction of held-out frames within the tolerance on
every joint. This is an upper bound on what a latent of that resolution can know, not a
measurement of a trained world model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import envs

ROOT = Path(__file__).resolve().parents[1]


def render_frames(env_name: str, sizes: list[int], n: int, seed: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
    spec = envs.get_spec(env_name)
    made = {s: envs.make_env(env_name, max_episode_steps=1, image_size=s) for s in sizes}
    frames = {s: np.empty((n, s, s, 3), np.uint8) for s in sizes}
    angles = np.empty((n, 2), np.float64)
    for i in tqdm(range(n), desc="render", mininterval=5):
        first = made[sizes[0]]
        first.reset(seed=seed + i)
        state = spec.get_state(first)
        for s, env in made.items():
            if s != sizes[0]:
                env.reset(seed=0)
                spec.set_state(env, state)
            frames[s][i] = env.unwrapped.render()
        angles[i] = state[:2]
    for env in reversed(list(made.values())):
        env.close()
    return frames, angles


def reader() -> nn.Module:
    layers, c = [], 3
    for width in (32, 64, 64, 128):
        layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.GELU()]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c * 4, 256), nn.GELU(),
                         nn.Linear(256, 4))


def measure(frames: np.ndarray, angles: np.ndarray, steps: int, tol: float, seed: int) -> dict:
    torch.manual_seed(seed)
    n_val = len(frames) // 8
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], 1)).float()
    xt, yt, xv, av = x[n_val:], y[n_val:], x[:n_val], angles[:n_val]
    net = reader()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc=f"train {frames.shape[1]}px", mininterval=10):
        idx = torch.randint(len(xt), (64,), generator=gen)
        loss = nn.functional.mse_loss(net(xt[idx].float() / 255), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        out = torch.cat([net(xv[i:i + 256].float() / 255) for i in range(0, n_val, 256)]).numpy()
    pred = np.arctan2(out[:, :2], out[:, 2:])
    err = np.abs(envs.wrap_angle(pred - av))
    return {"median_error_rad": np.median(err, 0).round(4).tolist(), "p90_error_rad": np.quantile(err, 0.9, 0).round(4).tolist(),
            "within_tol_all_joints": float(np.mean(np.all(err <= tol, 1))), "train_seconds": round(seconds, 1),
            "val_frames": int(n_val)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="dmc_reacher", choices=envs.env_names())
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--frames", type=int, default=12000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    spec = envs.get_spec(args.env)
    frames, angles = render_frames(args.env, args.sizes, args.frames, args.seed)
    results = {"env": args.env, "frames": args.frames, "steps": args.steps, "tolerance_rad": spec.success_threshold,
               "torch_threads": torch.get_num_threads(), "sizes": {}}
    for size in args.sizes:
        r = measure(frames[size], angles, args.steps, spec.success_threshold, args.seed)
        results["sizes"][size] = r
        print(f"{size:4d} px: median error {r['median_error_rad']} rad, p90 {r['p90_error_rad']}, "
              f"{100 * r['within_tol_all_joints']:.1f} % of {r['val_frames']} held-out frames within "
              f"{spec.success_threshold} rad on every joint ({r['train_seconds']:.0f} s training)", flush=True)
    out = Path(args.out or ROOT / "results" / "benchmarks" / f"resolution-{args.env}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
