"""The amortized goal-conditioned policy: its hindsight examples, its training, and its two uses."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from planners import CEMConfig
from planners.mpc import LatentMPCAgent, MPCConfig
from tests.conftest import dataset_args
from tests.models import tiny_world_model
from worldmodel.dynamics import StateLayout
from worldmodel.policy import GoalPolicy, HindsightStates, PolicyConfig, PolicyObjective, PolicyTrainConfig
from worldmodel.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
LOW, HIGH = np.array([-1.0, -1.0], np.float32), np.array([1.0, 1.0], np.float32)


def point_mass(episodes=40, steps=30, seed=0):
    """Episodes of a point that moves by its action (z_{t+1} = z_t + a_t), its position as the latent."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (episodes, steps, 2)).astype(np.float32)
    z = np.concatenate([rng.uniform(-3, 3, (episodes, 1, 2)), np.cumsum(actions, 1)], 1) + 0  # (E, steps + 1, 2)
    z[:, 1:] += z[:, :1]
    lengths = np.full(episodes, steps)
    eps = SimpleNamespace(actions=actions.reshape(-1, 2), lengths=lengths, num_episodes=episodes,
                          frame_starts=np.arange(episodes) * (steps + 1), step_starts=np.arange(episodes) * steps)
    return eps, torch.as_tensor(z.reshape(-1, 2), dtype=torch.float32)


def test_hindsight_examples_are_states_goals_and_actions_of_one_episode():
    layout = StateLayout(latent_dim=2, history=2, action_block=3, action_dim=2)
    eps, z = point_mass()
    s, g, a = HindsightStates(eps, z, layout, max_steps=7).sample(256, torch.Generator().manual_seed(0))
    assert s.shape == (256, layout.state_dim) and g.shape == (256, 2) and a.shape == (256, 6)
    frames = layout.frame_latents(s)  # (B, 2, 2): a block apart
    blocks = s[:, layout.latent_part :].reshape(-1, 3, 2)  # the actions between them
    assert torch.allclose(frames[:, 1] - frames[:, 0], blocks.sum(1), atol=1e-5)
    reach = (g - frames[:, 1]).abs().amax(1)
    assert bool((reach <= 7 + 1e-5).all())  # at most 7 steps of at most 1 per axis
    moved = a.reshape(-1, 3, 2).sum(1)  # where the taken block leads, when the goal is a block or more away
    assert moved.abs().max() <= 3 + 1e-5
    with pytest.raises(ValueError, match="one .* row per frame"):
        HindsightStates(eps, z[:-1], layout, 7)


def point_policy(max_steps: int):
    """An untrained policy on the point mass (its input scale fitted) and its training and validation examples
    with goals up to ``max_steps`` ahead."""
    layout = StateLayout(latent_dim=2, history=1, action_block=1, action_dim=2)
    eps, z = point_mass(episodes=200)
    val_eps, val_z = point_mass(episodes=20, seed=1)
    torch.manual_seed(0)
    policy = GoalPolicy(layout, PolicyConfig(hidden=64, layers=2, max_steps=max_steps), LOW, HIGH)
    train, val = HindsightStates(eps, z, layout, max_steps), HindsightStates(val_eps, val_z, layout, max_steps)
    policy.fit_scale(train.fixed(2048)[0])
    return policy, train, val


def test_the_policy_learns_the_way_to_a_goal_and_saves(tmp_path):
    policy, train, val = point_policy(max_steps=1)
    cfg = PolicyTrainConfig(steps=600, batch_size=256, lr=3e-3, log_every=300, checkpoint_every=600, progress=False,
                            val_examples=512, bc_weight=1.0, plan_weight=0.0)
    log = Trainer(PolicyObjective(policy, cfg, train, val), cfg, tmp_path / "run").run()
    assert log[-1]["val_mse"] < 0.1 * log[-1]["val_mse_mean_action"]  # one step away, the goal fixes the action
    policy.eval().save_pretrained(tmp_path / "policy")
    again = GoalPolicy.from_pretrained(tmp_path / "policy")
    s, g, _ = val.fixed(16)
    assert torch.equal(again(s, g), policy(s, g))
    out = policy(s * 100, g * -100)
    assert bool((out >= -1).all() and (out <= 1).all())  # inside the action box, whatever the input


class PointWorld:
    """The point mass as a world model: the next latent is the latent plus the action."""

    def predict(self, s, a, check_inputs=True):
        return s + a

    def newest(self, s):
        return s

    def requires_grad_(self, flag):
        return self

    def eval(self):
        return self


def test_the_plan_term_learns_to_reach_goals_from_random_data_through_the_model(tmp_path):
    policy, train, val = point_policy(max_steps=6)
    cfg = PolicyTrainConfig(steps=400, batch_size=256, lr=3e-3, log_every=200, checkpoint_every=400, progress=False,
                            val_examples=512, bc_weight=0.0, plan_weight=1.0, horizon=6)
    log = Trainer(PolicyObjective(policy, cfg, train, val, world=PointWorld()), cfg, tmp_path / "run").run()
    assert log[-1]["val_distance_left"] < 0.05  # six unit steps reach any goal at most six steps away
    assert log[-1]["val_mse"] > 0.2  # not by copying the random actions of the data
    with pytest.raises(ValueError, match="rolls the policy out through a world model"):
        PolicyObjective(policy, cfg, train, val)


def policy_for(model):
    torch.manual_seed(0)
    return GoalPolicy(model.layout, PolicyConfig(hidden=16, layers=1), LOW, HIGH).eval()


def test_planner_policy_plans_without_search_and_proposal_seeds_the_search():
    model = tiny_world_model(block=2, moving=True).eval()
    policy = policy_for(model)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    alone = LatentMPCAgent(model, MPCConfig(planner="policy", horizon=2, receding_horizon=2), LOW, HIGH,
                           torch.Generator(), policy=policy)
    alone.reset(images[:1])
    first = alone.act(images[1:])
    s0 = alone.last_plan[0]
    assert np.allclose(first[0], policy(s0, alone.goal[:, -1])[0, :2].detach().numpy(), atol=1e-6)
    assert alone.planner is None and len(alone.plan_seconds) == 1
    seeded = LatentMPCAgent(model, MPCConfig(horizon=2, receding_horizon=2, proposal="policy",
                                             cem=CEMConfig(samples=8, elites=2, iterations=1)),
                            LOW, HIGH, torch.Generator(), policy=policy)
    seen = []
    plan = seeded.planner.plan
    seeded.planner.plan = lambda *a, **k: seen.append((k["warm_start"], k["proposal"])) or plan(*a, **k)
    seeded.reset(images[:1])
    for _ in range(3):  # two replans: the episode's first, and one warm-started
        seeded.act(images[1:])
    proposed = seeded.policy_plan(seeded.last_plan[0])
    assert torch.equal(seen[0][0], seen[0][1]) and torch.allclose(seen[1][1], proposed)  # first mean, then a candidate
    assert not torch.equal(seen[1][0], seen[1][1])  # later means: the previous plan, shifted
    with pytest.raises(ValueError, match="needs the amortized policy; train one"):
        LatentMPCAgent(model, MPCConfig(planner="policy"), LOW, HIGH, torch.Generator())
    with pytest.raises(ValueError, match="proposal must be one of"):
        MPCConfig(proposal="prior")


@pytest.mark.slow
def test_train_policy_installs_and_plan_py_runs_it_alone_and_as_a_proposal(tiny_dataset, tmp_path):
    model = tmp_path / "model"
    tiny_world_model(block=5, moving=True).save_pretrained(model, extra={"env": "reacher"})
    data = dataset_args(tiny_dataset)
    plan = [sys.executable, str(ROOT / "experiments" / "plan.py"), *data, f"model={model}", "hierarchy=false",
            "planners=[cem,policy]", "mpc.proposal=policy", "episodes=2", "goal_offset=10", "budget=6",
            "mpc.cem.samples=10", "mpc.cem.elites=2", "mpc.cem.iterations=1", "videos=0", "baselines=[]",
            "progress=false", f"output_dir={tmp_path}/out", f"hydra.run.dir={tmp_path}/h1"]
    out = subprocess.run(plan, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "train_policy.py" in out.stderr, out.stderr[-2000:]
    train = [sys.executable, str(ROOT / "experiments" / "train_policy.py"), *data, f"model={model}",
             "policy.hidden=16", "policy.max_steps=8", "train.steps=4", "train.batch_size=16", "train.log_every=2",
             "train.val_examples=32", "train.progress=false", "install=true", f"out_dir={tmp_path}/policy",
             f"feature_cache={tmp_path}/cache", f"hydra.run.dir={tmp_path}/h2"]
    out = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "installed in" in out.stdout, out.stderr[-3000:]
    assert [row.split(",")[0] for row in (tmp_path / "policy" / "log.csv").read_text().splitlines()[1:]] == ["2", "4"]
    out = subprocess.run(plan, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("plan-reacher-*.json")
    summary = json.loads(result.read_text())
    assert [r["agent"] for r in summary["results"]] == ["cem-mpc", "policy-mpc"]
    assert all(r["episodes"] == 2 for r in summary["results"])
