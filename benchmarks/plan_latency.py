"""Planning latency: ms per replan, predictor FLOPs per plan, fraction of the matmul peak.

    python benchmarks/plan_latency.py [--env reacher] [--model models/reacher] [--replans 20] [--device auto]

Replans the latent MPC agent with its default settings on held-out-like random
images (the cost of a plan does not depend on the images), splits the time into
encoding and planning, and compares the predictor's FLOP rate with a large fp32
matmul on the same device. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import envs
from experiments.provenance import device_description, write_json
from planners.mpc import LatentMPCAgent, MPCConfig
from worldmodel.dynamics import WorldModel
from worldmodel.training import resolve_device


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """Measured fp32 matmul FLOP/s."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def predictor_flops_per_step(model) -> int:
    """Multiply-adds x 2 of one predictor call on one state (the linear layers dominate)."""
    return 2 * sum(m.weight.numel() for m in model.predictor.modules() if isinstance(m, torch.nn.Linear))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="reacher", choices=envs.env_names(), help="whose action bounds")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: models/<env>)")
    parser.add_argument("--replans", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/benchmarks/plan_latency.json")
    args = parser.parse_args()
    device = resolve_device(args.device, 0)
    args.model = args.model or f"models/{args.env}"
    model = WorldModel.from_pretrained(args.model, device)
    env = envs.make_env(args.env, max_episode_steps=1)
    space = env.action_space
    env.close()
    cfg = MPCConfig()
    agent = LatentMPCAgent(model, cfg, space.low, space.high, torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    size = model.image_shape[-1]
    image = lambda: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # noqa: E731
    agent.reset(image())

    def replan(obs):
        agent.history.clear()
        agent.history.add_frame(obs[None])
        agent.replan()

    for _ in range(3):  # warm-up
        replan(image())
    agent.plan_seconds.clear()
    encode_s = []
    for _ in range(args.replans):
        obs = image()
        t = time.perf_counter()
        agent.history.clear()
        agent.history.add_frame(obs[None])
        agent.encode()
        encode_s.append(time.perf_counter() - t)
        replan(obs)
    plan_s = float(np.mean(agent.plan_seconds))
    c = cfg.cem
    flops = predictor_flops_per_step(model) * c.samples * cfg.horizon * c.iterations
    peak = matmul_peak(device)
    result = {
        "device": device_description(), "model": args.model, "mpc": {"planner": cfg.planner, "horizon": cfg.horizon,
        "samples": c.samples, "elites": c.elites, "iterations": c.iterations},
        "ms_per_replan": 1000 * plan_s, "ms_encode": 1000 * float(np.mean(encode_s)),
        "predictor_flops_per_plan": flops, "achieved_flops_per_s": flops / plan_s, "matmul_peak_flops_per_s": peak,
        "fraction_of_peak": flops / plan_s / peak,
    }
    print(f"device: {result['device']}")
    print(f"CEM {c.samples} samples x {c.iterations} iterations x horizon {cfg.horizon}: "
          f"{result['ms_per_replan']:.1f} ms per replan (encoding {result['ms_encode']:.1f} ms of it)")
    print(f"predictor FLOPs per plan: {flops / 1e9:.2f} GFLOP; achieved {flops / plan_s / 1e9:.1f} GFLOP/s = "
          f"{result['fraction_of_peak']:.1%} of the measured matmul peak ({peak / 1e9:.0f} GFLOP/s)")
    out = write_json(args.out, result)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
