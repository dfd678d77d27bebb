"""What the data, the predictor and the planner reach with a perfect encoder:

    python benchmarks/state_model.py --data data/pusht-expert-96px-1000x100-s0-eab8759917 \\
        [--steps 2000] [--tasks 100] [--goal-offset 25 --budget 50] [--out results/benchmarks/state_model.json]

A world model whose frame latent is the simulator's own pose (every position the env records, and every angle
as its cosine and sine; standardised) instead of an image's encoding. Everything else is the pixel model's: the
predictor (``BlockPredictor``: 512 x 3, two latents one action block of 5 steps apart), its training windows and
losses (one step and 5 blocks open loop), and the planner (CEM 300 x 10 over 5 blocks, the smallest goal distance
along the plan with the block before it at half weight, the first block executed, then replanning), on the
held-out tasks ``plan.py`` draws (task seed 0). It is privileged: it reads the state where the pixel model reads
the image. The gap between its success and the pixel model's is what the encoder costs; its own gap to the
simulator oracle is what the data, the predictor and the planner cost. Prints the validation error by horizon
and the success with a Wilson interval, and writes JSON. About 10 minutes on 2 cores for 2000 steps and 100
Push-T tasks.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import envs
from experiments.provenance import write_json
from planners.base import Bounds
from planners.cem import CEM, CEMConfig
from worldmodel.data import open_dataset
from worldmodel.data.windows import WindowSampler
from worldmodel.dynamics import BlockPredictor, StateLayout
from worldmodel.evaluation import run_task, sample_goal_tasks
from worldmodel.evaluation.protocol import task_seed, wilson_interval


def pose_features(spec, physics: dict[str, np.ndarray]) -> np.ndarray:
    """The pose of every frame ``(F, d)`` from its recorded quantities ``{key: (F, k)}``: the positions, and
    the angles as cosine and sine."""
    parts = []
    for q in spec.quantities:
        x = np.asarray(physics[q.key], dtype=np.float64).reshape(-1, q.dims)
        if q.kind == "position":
            parts.append(x)
        elif q.kind == "angle":
            parts += [np.cos(x), np.sin(x)]
    return np.concatenate(parts, -1)


class StateModel(torch.nn.Module):
    """The pixel model's predictor and layout over standardised pose latents."""

    def __init__(self, layout: StateLayout, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.layout = layout
        self.predictor = BlockPredictor(layout, 512, 3)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def latents(self, pose: np.ndarray) -> torch.Tensor:
        return (torch.as_tensor(pose, dtype=torch.float32) - self.mean) / self.std

    def predict(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.layout.shift(s, self.layout.newest(s) + self.predictor(s, a), a)

    def rollout(self, s: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        out = []
        for t in range(blocks.shape[-2]):
            s = self.predict(s, blocks[..., t, :])
            out.append(s)
        return torch.stack(out, -2)


class Windows:
    """Training windows of pose latents and action blocks, as the pixel model's ``WindowBatches``."""

    def __init__(self, model: StateModel, episodes, latents: torch.Tensor, rollout: int):
        L = model.layout
        self.layout, self.latents = L, latents
        self.sampler = WindowSampler(episodes, window=L.window_frames(rollout))
        self.actions = torch.from_numpy(np.array(episodes.actions, dtype=np.float32))
        self.boundaries = L.boundaries(rollout)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.sampler), (n,), generator=generator).numpy()
        frames, steps = self.sampler.rows(index)
        return (self.latents[torch.from_numpy(frames[:, self.boundaries])],
                self.layout.blocks(self.actions[torch.from_numpy(steps)]))


def losses(model: StateModel, z: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-step and open-loop errors of windows ``z (B, R+h, d)``, ``blocks (B, R+h-1, block_dim)``."""
    L = model.layout
    states, actions, targets = L.window_states(z, blocks)[:, :-1], L.step_blocks(blocks), L.step_latents(z)
    one = F.mse_loss(L.newest(model.predict(states, actions)), targets)
    per_horizon = ((L.newest(model.rollout(states[:, 0], actions)) - targets) ** 2).mean((0, 2))
    return one, per_horizon


class StateAgent:
    """CEM on the state model toward the goal's pose; it reads the env's state (privileged)."""

    privileged = True

    def __init__(self, model: StateModel, spec, env, cem: CEMConfig, horizon: int, seed: int):
        L = model.layout
        self.model, self.spec, self.env, self.horizon = model, spec, env.unwrapped, horizon
        space = env.action_space
        self.bounds = Bounds(np.tile(space.low, L.action_block), np.tile(space.high, L.action_block))
        self.cem = CEM(cem, horizon, self.bounds)
        self.gen = torch.Generator().manual_seed(seed)
        self.name = "state-model-cem"
        self.scratch = envs.make_env(spec.name, image_size=16)
        if not hasattr(self.scratch.unwrapped, "physics"):
            raise ValueError(f"env {spec.name!r} cannot report the quantities of a state (no physics()): the state "
                             f"model needs it to read a pose")

    def seed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    def set_goal_state(self, goal_state: np.ndarray) -> None:
        self.goal = self.model.latents(self.pose(goal_state))

    def pose(self, state: np.ndarray) -> np.ndarray:
        """The pose of a flat state, read from the scratch env set to it."""
        self.spec.set_state(self.scratch, state)
        return pose_features(self.spec, self.scratch.unwrapped.physics())[0]

    def reset(self, goal_obs: np.ndarray) -> None:
        self.queue, self.history, self.actions = [], [], []

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        L = self.model.layout
        self.history.append(self.pose(self.spec.get_state(self.env)))
        if not self.queue:
            newest = len(self.history) - 1  # before the first frame: the first frame, and no action
            frames = np.stack([self.history[max(i, 0)] for i in newest + L.state_offsets()])
            acted = np.stack([self.actions[i] if i >= 0 else np.zeros(L.action_dim)
                              for i in newest + L.state_action_offsets()])
            z = self.model.latents(frames)
            s0 = L.compose(z[None], L.blocks(torch.as_tensor(acted, dtype=torch.float32)[None]))[0]

            def cost(blocks: torch.Tensor) -> torch.Tensor:  # (1, S, H, block_dim) -> (1, S)
                states = self.model.rollout(s0.expand(blocks.shape[1], -1), blocks[0])
                frames = L.frame_latents(states)  # (S, H, history, d)
                d = ((frames - self.goal) ** 2).sum(-1)
                return (d[..., -1] + 0.5 * d[..., -2]).min(-1).values[None]

            plan = self.cem.plan(cost, 1, self.gen).actions[0, 0].reshape(L.action_block, L.action_dim)
            self.queue = list(plan.numpy())
        action = self.queue.pop(0)
        self.actions.append(action)
        return action


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--goal-offset", type=int, default=25)
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--task-seed", type=int, default=0)
    parser.add_argument("--rollout", type=int, default=5, help="action blocks per training window")
    parser.add_argument("--out", default="results/benchmarks/state_model.json")
    args = parser.parse_args()
    if min(args.steps, args.tasks, args.goal_offset, args.budget, args.rollout) < 1:
        raise SystemExit(f"--steps, --tasks, --goal-offset, --budget and --rollout must be >= 1, got {vars(args)}")
    dataset = open_dataset(args.data)
    name = dataset.manifest["env"]["name"]
    spec = envs.get_spec(name)
    train, val, heldout = (dataset.split(s) for s in ("train", "val", "heldout"))
    pose = {s: pose_features(spec, e.physics) for s, e in (("train", train), ("val", val))}
    torch.manual_seed(0)
    layout = StateLayout(pose["train"].shape[1], 2, 5, train.actions.shape[1])
    model = StateModel(layout, pose["train"].mean(0), pose["train"].std(0) + 1e-6)
    windows = {s: Windows(model, e, model.latents(pose[s]), args.rollout) for s, e in (("train", train), ("val", val))}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    gen, start = torch.Generator().manual_seed(0), time.perf_counter()
    for step in range(args.steps):
        one, per_horizon = losses(model, *windows["train"].sample(256, gen))
        loss = one + per_horizon.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        one, per_horizon = losses(model, *windows["val"].sample(2048, torch.Generator().manual_seed(1)))
    print(f"trained {args.steps} steps in {train_seconds:.0f} s; validation MSE of the standardised pose by "
          f"horizon (blocks of 5 steps): {', '.join(f'{x:.3f}' for x in per_horizon.tolist())}")

    env = envs.make_env(name, image_size=16)
    rng = np.random.default_rng(args.task_seed)
    tasks = sample_goal_tasks(heldout, spec, args.tasks, args.goal_offset, rng)
    agent = StateAgent(model, spec, env, CEMConfig(samples=300, elites=30, iterations=10), horizon=5, seed=0)
    results = []
    for i, task in enumerate(tasks):
        agent.seed(task_seed(args.task_seed, i))
        results.append(run_task(env, spec, task, agent, args.budget))
    wins = sum(r.success for r in results)
    lo, hi = wilson_interval(wins, len(results))
    print(f"state-model CEM: {wins}/{len(results)} [{100 * lo:.1f}%, {100 * hi:.1f}%] at goal offset "
          f"{args.goal_offset}, budget {args.budget}; median best goal error "
          f"{np.median([r.best_goal_error for r in results]):.2f}")
    write_json(args.out, {"data": args.data, "env": name, "steps": args.steps, "train_seconds": train_seconds,
                          "rollout": args.rollout, "val_one_step": one.item(), "val_rollout_by_horizon": per_horizon.tolist(),
                          "goal_offset": args.goal_offset, "budget": args.budget, "task_seed": args.task_seed,
                          "successes": wins, "tasks": len(results), "wilson95": [lo, hi],
                          "best_goal_errors": [r.best_goal_error for r in results]})
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
