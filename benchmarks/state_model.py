"""What the data, the predictor and the planner reach with a perfect encoder:

    python benchmarks/state_model.py --data data/pusht-expert-96px-1000x100-s0-eab8759917 \\
        [--steps 2000] [--tasks 100] [--goal-offset 25 --budget 50] [--out results/benchmarks/state_model.json]
        [--samples 300 --iterations 10 --horizon 5] [--hidden 512 --depth 3] [--cost latent|pose]
        [--save M.pt | --load M.pt [--ensemble M2.pt ... --disagreement B]] [--simulator] [--velocities W]

A world model whose frame latent is the simulator's own pose (every position the env records, and every angle
as its cosine and sine; standardised) instead of an image's encoding. Everything else is the pixel model's: the
predictor (``BlockPredictor``: 512 x 3, two latents one action block of 5 steps apart), its training windows and
losses (one step and 5 blocks open loop), and the planner (CEM 300 x 10 over 5 blocks, the smallest goal distance
along the plan with the block before it at half weight, the first block executed, then replanning), on the
held-out tasks ``plan.py`` draws (task seed 0). It is privileged: it reads the state where the pixel model reads
the image. The gap between its success and the pixel model's is what the encoder costs; its own gap to the
simulator oracle is what the data, the predictor and the planner cost. ``--cost pose`` plans on the env's own goal
error (Push-T: the success test's pose error) of each predicted pose instead of the squared latent distance: what the
cost's shape costs, with the model kept. ``--simulator`` plans with the same planner, cost and plan shape on the
poses the simulator reaches instead of the model's predictions (Push-T): what the model costs, with the planner
kept. ``--velocities W`` adds the flat state's velocities, which no image shows, to each frame's latent, scaled so
that they weigh ``W`` in the loss against each pose column's 1 (the cost and every error printed compare the pose
alone): what the frames' missing velocities cost. ``--ensemble`` plans with further saved models beside the loaded
one, each candidate's cost the members' mean plus ``B`` times their standard deviation: what a model that says
how sure it is buys.

Prints the validation error by horizon, the error at the last block by how far each window turns the env's first
angle (held-out and training windows), the model's error on the plans its planner chose against the simulator
playing them (does the planner steer into the model's mistakes?), and the success with a Wilson interval, and
writes JSON. About 10 minutes on 2 cores for 2000 steps and 100 Push-T tasks.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

import envs
from experiments.provenance import write_json
from envs.pusht import ANGLE_TOLERANCE, POSITION_TOLERANCE
from planners.base import Bounds
from planners.cem import CEM, CEMConfig
from worldmodel.data import open_dataset
from worldmodel.data.windows import WindowSampler
from worldmodel.dynamics import BlockPredictor, StateLayout
from worldmodel.evaluation import run_task, sample_goal_tasks
from worldmodel.evaluation.protocol import task_seed, wilson_interval
from worldmodel.files import write_verified


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


def angle_columns(spec) -> tuple[int, int] | None:
    """Where the first angle's cosine and sine sit in :func:`pose_features`' columns (None: the env has no angle)."""
    column = 0
    for q in spec.quantities:
        if q.kind == "angle":
            return column, column + q.dims
        column += q.dims if q.kind == "position" else 0
    return None


TURN_BINS = (0.0, 0.01, 0.2, 0.5, 1.0, math.inf)  # rad


def pose_size(spec) -> int:
    """How many entries of the flat state the pose's quantities take (positions and angles)."""
    return sum(q.dims for q in spec.quantities if q.kind in ("position", "angle"))


def frame_features(spec, physics: dict[str, np.ndarray], states: np.ndarray, velocities: bool) -> np.ndarray:
    """:func:`pose_features`, followed with ``velocities`` by the flat Push-T states' ``(F, 10)`` entries after the
    pose's (the agent's and the T's velocities, the T's angular velocity)."""
    if velocities and spec.name != "pusht":
        raise ValueError(f"velocities read Push-T's flat state (the pose, then the agent's and the T's velocities); "
                         f"env {spec.name!r} lays its state out otherwise")
    pose = pose_features(spec, physics)
    if not velocities:
        return pose
    states = np.asarray(states, dtype=np.float64).reshape(len(pose), -1)
    return np.concatenate([pose, states[:, pose_size(spec):]], -1)


def predictor_size(weights: dict[str, torch.Tensor]) -> tuple[int, int]:
    """The width and the hidden layers of a saved :class:`StateModel`, read off its predictor's weight matrices."""
    matrices = [v for k, v in weights.items() if k.startswith("predictor.") and v.dim() == 2]
    return matrices[0].shape[0], len(matrices) - 1


class StateModel(torch.nn.Module):
    """The pixel model's predictor and layout over standardised pose latents."""

    def __init__(self, layout: StateLayout, mean: np.ndarray, std: np.ndarray, hidden: int = 512, depth: int = 3,
                 pose_dims: int | None = None):
        super().__init__()
        self.layout = layout
        self.pose_dims = layout.latent_dim if pose_dims is None else pose_dims  # the latent's pose part (the cost's)
        self.predictor = BlockPredictor(layout, hidden, depth)
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


def open_loop(model: StateModel, z: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Of windows ``z (B, R+h, d)``, ``blocks (B, R+h-1, block_dim)``: the states at their ``R`` model steps, the
    action block of each, the newest latent the model predicts after each rolling out from the first state, and
    the latent it should (both ``(B, R, d)``)."""
    L = model.layout
    states, actions, targets = L.window_states(z, blocks)[:, :-1], L.step_blocks(blocks), L.step_latents(z)
    return states, actions, L.newest(model.rollout(states[:, 0], actions)), targets


def losses(model: StateModel, z: torch.Tensor, blocks: torch.Tensor,
           dims: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One-step and open-loop errors of windows ``z``, ``blocks`` (as :func:`open_loop` takes them) in the
    latent's first ``dims`` columns (all by default)."""
    states, actions, predicted, targets = open_loop(model, z, blocks)
    one = F.mse_loss(model.layout.newest(model.predict(states, actions))[..., :dims], targets[..., :dims])
    per_horizon = ((predicted - targets)[..., :dims] ** 2).mean((0, 2))
    return one, per_horizon


def error_by_turn(model: StateModel, z: torch.Tensor, blocks: torch.Tensor, columns: tuple[int, int]) -> list[dict]:
    """The open-loop error at the last block of windows ``z``, ``blocks`` (as :func:`open_loop` takes them) in each
    :data:`TURN_BINS` bin of how far the window turns the angle whose cosine and sine are latent ``columns``, from
    its start's newest frame to its last: ``{"turn_rad": [lo, hi or None], "share": windows, "mse": error}``."""
    states, _, predicted, targets = open_loop(model, z, blocks)
    last = ((predicted[:, -1] - targets[:, -1])[:, : model.pose_dims] ** 2).mean(-1)

    def angle(x: torch.Tensor) -> torch.Tensor:
        pose = x * model.std + model.mean
        return torch.atan2(pose[..., columns[1]], pose[..., columns[0]])

    turn = angle(targets[:, -1]) - angle(model.layout.newest(states[:, 0]))
    turn = torch.remainder(turn + math.pi, 2 * math.pi) - math.pi
    out = []
    for lo, hi in zip(TURN_BINS[:-1], TURN_BINS[1:]):
        m = (turn.abs() >= lo) & (turn.abs() < hi)
        out.append({"turn_rad": [lo, hi if math.isfinite(hi) else None], "share": m.float().mean().item(),
                    "mse": last[m].mean().item() if m.any() else None})
    return out


def pusht_pose(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Push-T's pose (agent x and y, the T's x, y and angle) of standardised pose latents ``(..., 6)``
    (the positions, then the angle's cosine and sine, as :func:`pose_features` makes them)."""
    d = z.shape[-1]  # the pose part of a latent that may go on (with velocities)
    pose = z * std[:d] + mean[:d]
    return torch.cat([pose[..., :4], torch.atan2(pose[..., 5], pose[..., 4])[..., None]], -1)


def pusht_pose_error(pose: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """``envs.pusht.pose_error`` (1 = the success tolerance) of poses ``(..., 5)`` to the goal's ``(5,)``."""
    position = (pose[..., :4] - goal[:4]).norm(dim=-1) / POSITION_TOLERANCE
    turn = torch.remainder(pose[..., 4] - goal[4] + math.pi, 2 * math.pi) - math.pi
    return torch.maximum(position, turn.abs() / ANGLE_TOLERANCE)


class StateAgent:
    """CEM on the state model toward the goal's pose; it reads the env's state (privileged)."""

    privileged = True

    def __init__(self, model: StateModel, spec, env, cem: CEMConfig, horizon: int, seed: int, cost: str = "latent",
                 simulator: bool = False, velocities: bool = False, members: tuple[StateModel, ...] = (),
                 disagreement: float = 1.0):
        if simulator and (spec.simulate is None or model.layout.history != 2):
            raise ValueError(f"simulator=True plays candidate plans on env {spec.name!r}'s own simulate() with a "
                             f"two-frame history; this env has none or the model's history is {model.layout.history}")
        if cost not in ("latent", "pose"):
            raise ValueError(f"cost={cost!r}: expected 'latent' (squared latent distance) or 'pose' (the env's goal "
                             f"error)")
        if cost == "pose" and spec.name != "pusht":
            raise ValueError(f"cost='pose' reads a Push-T pose from the latent; env {spec.name!r} is not Push-T")
        L = model.layout
        self.cost_kind, self.simulator, self.velocities = cost, simulator, velocities
        self.members, self.disagreement = tuple(members), disagreement  # further models: an ensemble's cost
        self.model, self.spec, self.env, self.horizon = model, spec, env.unwrapped, horizon
        space = env.action_space
        self.bounds = Bounds(np.tile(space.low, L.action_block), np.tile(space.high, L.action_block))
        self.cem = CEM(cem, horizon, self.bounds)
        self.gen = torch.Generator().manual_seed(seed)
        self.name = "state-model-cem"
        self.plan_errors = []  # per replan, the chosen plan's error by block against the simulator playing it
        self.scratch = envs.make_env(spec.name, image_size=16)
        self.scratch.reset(seed=0)  # steppable: set_state then replays plans on it
        if not hasattr(self.scratch.unwrapped, "physics"):
            raise ValueError(f"env {spec.name!r} cannot report the quantities of a state (no physics()): the state "
                             f"model needs it to read a pose")

    def seed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    def set_goal_state(self, goal_state: np.ndarray) -> None:
        self.goal = self.model.latents(self.pose(goal_state))[: self.model.pose_dims]
        self.goal_pose = pusht_pose(self.goal, self.model.mean, self.model.std)

    def pose(self, state: np.ndarray) -> np.ndarray:
        """The latent features of a flat state, read from the scratch env set to it."""
        self.spec.set_state(self.scratch, state)
        return self.scratch_features()

    def scratch_features(self) -> np.ndarray:
        """The latent features of the scratch env's current state (its pose, and its velocities with them)."""
        return frame_features(self.spec, self.scratch.unwrapped.physics(), self.spec.get_state(self.scratch)[None],
                              self.velocities)[0]

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

            def frame_cost(frames: torch.Tensor) -> torch.Tensor:  # (S, H, history, d) -> (S,)
                frames = frames[..., : self.model.pose_dims]
                d = ((frames - self.goal) ** 2).sum(-1) if self.cost_kind == "latent" else pusht_pose_error(
                    pusht_pose(frames, self.model.mean, self.model.std), self.goal_pose)
                return (d[..., -1] + 0.5 * d[..., -2]).min(-1).values

            def cost(blocks: torch.Tensor) -> torch.Tensor:  # (1, S, H, block_dim) -> (1, S)
                if self.simulator:
                    return frame_cost(self.simulated_frames(blocks[0]))[None]
                costs = torch.stack([frame_cost(L.frame_latents(m.rollout(s0.expand(blocks.shape[1], -1), blocks[0])))
                                     for m in (self.model, *self.members)])
                if not self.members:
                    return costs
                return (costs.mean(0) + self.disagreement * costs.std(0))[None]

            blocks = self.cem.plan(cost, 1, self.gen).actions[0]  # (H, block_dim)
            self.audit(s0, blocks)
            self.queue = list(blocks[0].reshape(L.action_block, L.action_dim).numpy())
        action = self.queue.pop(0)
        self.actions.append(action)
        return action

    def simulated_frames(self, blocks: torch.Tensor) -> torch.Tensor:
        """What the model's rollout gives the cost, from the simulator instead: the latents ``(S, H, 2, d)`` of the
        poses it reaches at the end of each of the candidate plans' ``(S, H, block_dim)`` blocks, after those at
        the end of the block before (the current pose before the first)."""
        L = self.model.layout
        S, H = blocks.shape[:2]
        state = self.spec.get_state(self.env)
        flat = self.spec.simulate(self.env, state, blocks.reshape(S, -1, L.action_dim).double().numpy())
        ends = flat.reshape(S, H, L.action_block, -1)[:, :, -1].reshape(-1, flat.shape[-1])  # after each block
        reached = self.model.latents(np.stack([self.pose(s) for s in ends])).view(S, H, -1)
        now = self.model.latents(self.pose(state)).expand(S, 1, -1)
        return torch.stack([torch.cat([now, reached[:, :-1]], 1), reached], -2)

    def audit(self, s0: torch.Tensor, blocks: torch.Tensor) -> None:
        """Keep the error by block of the model's rollout of plan ``blocks`` from ``s0`` against the poses the
        scratch env reaches playing the plan from the env's state (the env itself is left as it was)."""
        L = self.model.layout
        predicted = L.newest(self.model.rollout(s0[None], blocks[None]))[0]  # (H, d)
        self.spec.set_state(self.scratch, self.spec.get_state(self.env))
        reached = []
        for block in blocks.reshape(len(blocks), L.action_block, L.action_dim).numpy():
            for action in block:
                self.scratch.step(action)
            reached.append(self.scratch_features())
        self.last_audit = predicted, self.model.latents(np.stack(reached))
        pose = self.model.pose_dims
        self.plan_errors.append(((predicted - self.last_audit[1])[:, :pose] ** 2).mean(-1).tolist())


def fit(model: StateModel, windows: Windows, steps: int) -> float:
    """``steps`` AdamW steps on the one-step and open-loop errors of 256-window batches; returns the seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    gen, start = torch.Generator().manual_seed(0), time.perf_counter()
    for _ in range(steps):
        one, per_horizon = losses(model, *windows.sample(256, gen))
        loss = one + per_horizon.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--goal-offset", type=int, default=25)
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--task-seed", type=int, default=0)
    parser.add_argument("--rollout", type=int, default=5, help="action blocks per training window")
    parser.add_argument("--hidden", type=int, default=512, help="the predictor's width (the pixel model's: 512)")
    parser.add_argument("--depth", type=int, default=3, help="the predictor's hidden layers (the pixel model's: 3)")
    parser.add_argument("--samples", type=int, default=300, help="CEM samples")
    parser.add_argument("--iterations", type=int, default=10, help="CEM iterations")
    parser.add_argument("--horizon", type=int, default=5, help="action blocks per plan (the pixel model's: 5)")
    parser.add_argument("--cost", choices=("latent", "pose"), default="latent",
                        help="latent: squared distance to the goal's latent; pose: the env's goal error (Push-T)")
    parser.add_argument("--simulator", action="store_true",
                        help="plan on the simulator's poses instead of the model's (Push-T): the ceiling of this "
                        "planner, cost and plan shape; about 4 s per replan at 200 x 5")
    parser.add_argument("--velocities", type=float, default=0.0, metavar="W",
                        help="add the state's velocities to the latent, weighing W in the loss (Push-T; 0: none)")
    parser.add_argument("--save", help="write the trained model here")
    parser.add_argument("--load", help="plan with this saved model instead of training one (--steps is ignored; "
                        "--hidden and --depth are the saved model's)")
    parser.add_argument("--ensemble", nargs="+", default=[], metavar="M",
                        help="further saved models (of the same data and latent) to plan with beside --load's")
    parser.add_argument("--disagreement", type=float, default=1.0,
                        help="with --ensemble: the weight of the members' cost spread added to their mean cost")
    parser.add_argument("--out", default="results/benchmarks/state_model.json")
    args = parser.parse_args()
    if min(args.steps, args.tasks, args.goal_offset, args.budget, args.rollout, args.samples, args.iterations,
           args.hidden, args.depth, args.horizon) < 1:
        raise SystemExit(f"--steps, --tasks, --goal-offset, --budget, --rollout, --samples, --iterations, --hidden, "
                         f"--depth and --horizon must be >= 1, got {vars(args)}")
    if args.samples < 20:
        raise SystemExit(f"--samples {args.samples}: CEM refits on the best tenth, at least 2, so it needs >= 20")
    dataset = open_dataset(args.data)
    name = dataset.manifest["env"]["name"]
    spec = envs.get_spec(name)
    train, val, heldout = (dataset.split(s) for s in ("train", "val", "heldout"))
    if args.ensemble and not args.load:
        raise SystemExit(f"--ensemble {args.ensemble}: its models plan beside a loaded one; give --load too")
    if args.velocities < 0:
        raise SystemExit(f"--velocities {args.velocities}: the velocities' weight in the loss is >= 0")
    pose_dims = pose_features(spec, {k: v[:1] for k, v in train.physics.items()}).shape[1]
    saved = torch.load(args.load, weights_only=True) if args.load else None
    if saved is not None:  # the saved predictor's size (and below, its latent's)
        args.hidden, args.depth = predictor_size(saved)
    velocities = args.velocities > 0 or (saved is not None and len(saved["mean"]) > pose_dims)
    pose = {s: frame_features(spec, e.physics, e.states, velocities) for s, e in (("train", train), ("val", val))}
    std = pose["train"].std(0) + 1e-6
    if args.velocities > 0:  # a column of scale 1/sqrt(W) weighs W in the squared error
        std[pose_dims:] /= math.sqrt(args.velocities)
    torch.manual_seed(0)
    layout = StateLayout(pose["train"].shape[1], 2, 5, train.actions.shape[1])
    model = StateModel(layout, pose["train"].mean(0), std, args.hidden, args.depth, pose_dims)
    if args.load:  # before the windows: their latents are standardised by the saved model's statistics
        model.load_state_dict(saved)
    windows = {s: Windows(model, e, model.latents(pose[s]), args.rollout) for s, e in (("train", train), ("val", val))}
    members = []
    for path in args.ensemble:
        weights = torch.load(path, weights_only=True)
        if not (torch.equal(weights["mean"], model.mean) and torch.equal(weights["std"], model.std)):
            raise SystemExit(f"--ensemble {path}: its latent is standardised otherwise than {args.load}'s (another "
                             f"dataset or latent); an ensemble's members read the same latent")
        member = StateModel(layout, model.mean.numpy(), model.std.numpy(), *predictor_size(weights), pose_dims)
        member.load_state_dict(weights)
        members.append(member.eval())
    if args.load:
        train_seconds = None
    else:
        train_seconds = fit(model, windows["train"], args.steps)
        if args.save:
            write_verified(args.save, lambda tmp: torch.save(model.state_dict(), tmp))
    model.eval()
    with torch.no_grad():
        one, per_horizon = losses(model, *windows["val"].sample(2048, torch.Generator().manual_seed(1)), pose_dims)
        angles = angle_columns(spec)
        by_turn = {s: error_by_turn(model, *windows[s].sample(8192, torch.Generator().manual_seed(2)), angles)
                   for s in ("val", "train")} if angles is not None else None
    trained = f"loaded {args.load}" if args.load else f"trained {args.steps} steps in {train_seconds:.0f} s"
    print(f"{trained}; validation MSE of the standardised pose by "
          f"horizon (blocks of 5 steps): {', '.join(f'{x:.3f}' for x in per_horizon.tolist())}")
    if by_turn is not None:
        print(f"at the last block, by how far the window turns the {spec.name} env's angle (held-out / training "
              f"windows; share of held-out windows):")
        for v, t in zip(by_turn["val"], by_turn["train"]):
            lo, hi = v["turn_rad"]
            mse = [math.nan if b["mse"] is None else b["mse"] for b in (v, t)]  # None: no window turned so far
            print(f"  turn {lo:g}-{hi if hi is not None else math.inf:g} rad: {mse[0]:.3f} / {mse[1]:.3f} "
                  f"({100 * v['share']:.0f} %)")

    env = envs.make_env(name, image_size=16)
    rng = np.random.default_rng(args.task_seed)
    tasks = sample_goal_tasks(heldout, spec, args.tasks, args.goal_offset, rng)
    cem = CEMConfig(samples=args.samples, elites=args.samples // 10, iterations=args.iterations)
    agent = StateAgent(model, spec, env, cem, horizon=args.horizon, seed=0, cost=args.cost, simulator=args.simulator,
                       velocities=velocities, members=members, disagreement=args.disagreement)
    results = []
    for i, task in enumerate(tasks):
        agent.seed(task_seed(args.task_seed, i))
        results.append(run_task(env, spec, task, agent, args.budget))
    wins = sum(r.success for r in results)
    plan_errors = np.array(agent.plan_errors).reshape(-1, args.horizon)
    if len(plan_errors):
        print(f"the model's error on the {len(plan_errors)} plans it chose, by block, against the simulator playing "
              f"them: mean {', '.join(f'{x:.3f}' for x in plan_errors.mean(0))}; median "
              f"{', '.join(f'{x:.3f}' for x in np.median(plan_errors, 0))}")
    lo, hi = wilson_interval(wins, len(results))
    print(f"{'simulator' if args.simulator else 'state-model'} CEM {args.samples} x {args.iterations} over "
          f"{args.horizon} blocks, {args.cost} cost: "
          f"{wins}/{len(results)} [{100 * lo:.1f}%, {100 * hi:.1f}%] at goal offset "
          f"{args.goal_offset}, budget {args.budget}; median best goal error "
          f"{np.median([r.best_goal_error for r in results]):.2f}")
    write_json(args.out, {"data": args.data, "env": name, "steps": None if args.load else args.steps,
                          "loaded": args.load, "train_seconds": train_seconds, "hidden": args.hidden,
                          "depth": args.depth, "samples": args.samples, "iterations": args.iterations,
                          "horizon": args.horizon, "cost": args.cost, "rollout": args.rollout,
                          "simulator": args.simulator,
                          "ensemble": args.ensemble, "disagreement": args.disagreement if args.ensemble else None,
                          "velocities": velocities, "velocity_weight": args.velocities or None,
                          "val_one_step": one.item(),
                          "val_rollout_by_horizon": per_horizon.tolist(), "rollout_by_turn": by_turn,
                          "plans_audited": len(plan_errors),
                          "plan_error_mean_by_block": plan_errors.mean(0).tolist() if len(plan_errors) else None,
                          "plan_error_median_by_block": np.median(plan_errors, 0).tolist() if len(plan_errors)
                          else None,
                          "goal_offset": args.goal_offset, "budget": args.budget, "task_seed": args.task_seed,
                          "successes": wins, "tasks": len(results), "wilson95": [lo, hi],
                          "best_goal_errors": [r.best_goal_error for r in results]})
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
