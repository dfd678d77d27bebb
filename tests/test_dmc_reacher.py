"""DMC reacher under the peers' protocol: its configs, the peers' CEM as a side-by-side variant, and
the peer-scale (224 px, 10k trajectories) configuration checked to start on CPU."""

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from experiments.conf import load
from planners.mpc import MPCConfig
from worldmodel.jepa import JEPA, jepa_loss, sample_masks


def test_dmc_configs_compose_on_one_dataset():
    stages = {name: load(name, ["env=dmc_reacher"]) for name in ("collect", "pretrain", "train_dynamics", "plan")}
    names = {cfg.data.dataset_name(cfg.env) for cfg in stages.values()}
    assert len(names) == 1, f"every stage must read the same dataset, got {names}"
    pre = stages["pretrain"]
    assert pre.model.encoder.image_size == pre.env.image_size and pre.env.image_size % pre.model.encoder.patch_size == 0
    assert stages["train_dynamics"].encoder_checkpoint == pre.out_dir + "/checkpoint"
    plan = stages["plan"]
    assert plan.model == "models/dmc_reacher" and (plan.goal_offset, plan.budget) == (25, 50)
    assert set(plan.baselines) == {"random", "zero", "oracle"}


def test_peers_cem_executes_its_whole_plan_and_ours_replans_every_block():
    """The peers' protocol as it acts: their agent executes the whole 25-step plan before replanning,
    ours replans after every 5-step block."""
    import numpy as np

    from experiments.agents import Levels, make_agent
    from tests.models import tiny_world_model

    plan = load("plan", ["env=dmc_reacher", "mpc.cem.samples=20", "mpc.cem.elites=4", "variants.peers.cem.samples=30",
                         "variants.peers.cem.iterations=3", "variants.peers.cem.elites=4"])
    model = tiny_world_model(block=5)

    class Env:  # what the agents read of an env
        action_space = type("Box", (), {"low": np.full(2, -1.0), "high": np.full(2, 1.0)})()

    ours = make_agent("cem-mpc", plan, Env(), None, Levels(model))
    peers = make_agent("cem-peers", plan, Env(), None, Levels(model))
    obs = np.zeros((64, 64, 3), np.uint8)
    for agent in (ours, peers):
        agent.reset(obs)
        for _ in range(50):
            agent.act(obs)
    assert (ours.name, peers.name) == ("cem-mpc", "cem-peers")
    assert (len(ours.plan_seconds), len(peers.plan_seconds)) == (10, 2)
    assert peers.plan_flops[-1] > ours.plan_flops[-1]  # 30 x 3 candidates against 20 x 3 (and two frames encoded)


def test_a_variant_may_not_take_another_agents_name():
    plan = load("plan", ["env=dmc_reacher"])
    with pytest.raises(ValueError, match="two agents one name"):
        replace(plan, variants={"mpc": MPCConfig()})  # cem-mpc is the flat CEM agent's name


def test_peer_scale_starts():
    """The peers' data size and resolution (preset=dmc_reacher-peers): every stage's config composes,
    and the encoder takes a training step on 224 px frames."""
    over = ["env=dmc_reacher", "preset=dmc_reacher-peers"]
    collect = load("collect", over)
    assert (collect.env.image_size, collect.env.episode_steps, collect.data.train_episodes) == (224, 200, 10000)
    pre = load("pretrain", over)
    dyn = load("train_dynamics", over)
    plan = load("plan", over)
    assert len({c.data.dataset_name(c.env) for c in (collect, pre, dyn, plan)}) == 1
    grid = pre.env.image_size // pre.model.encoder.patch_size
    assert grid % dyn.dynamics.pool == 0
    torch.manual_seed(0)
    jepa = JEPA(pre.model)
    frames = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    context, targets = sample_masks(torch.Generator().manual_seed(0), 2, pre.model.encoder.grid, pre.model.masks)
    assert pre.model.encoder.grid == (16, 16)  # 256 patches of 14 px a frame at the peers' resolution
    loss = jepa_loss(jepa, frames, context, targets)["loss"]
    loss.backward()
    grads = [p.grad for p in jepa.encoder.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.slow
def test_plan_on_dmc_reacher_runs_ours_and_the_peers_cem_side_by_side(tmp_path):
    """The shipped DMC model through ``plan.py env=dmc_reacher``: our CEM, the peers' CEM and the three
    reference agents on the same tasks from a freshly collected held-out split."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "experiments" / "plan.py"), "env=dmc_reacher", f"data.root={tmp_path}/data",
           "data.heldout_episodes=2", "env.episode_steps=30", "episodes=2", "budget=6", "goal_offset=10",
           "data.num_envs=1",
           "progress=false", "videos=1", f"output_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/hydra"]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "results").glob("plan-dmc_reacher-*.json")
    summary = json.loads(result.read_text())
    assert [r["agent"] for r in summary["results"]] == ["cem-mpc", "cem-hier", "cem-peers", "random", "zero",
                                                                "oracle-cem"]
    for agent in ("cem-mpc", "cem-hier"):  # the default runs flat and hierarchical, each with its cost per step
        assert re.search(rf"planning {agent}: \d+ ms/replan; per control step \d+ ms, [\d.]+ GFLOP", out.stdout)
    assert all(r["episodes"] == 2 for r in summary["results"])
    assert summary["variants"]["peers"]["cem"]["iterations"] == 30
    peers = next(r for r in summary["results"] if r["agent"] == "cem-peers")
    assert 1 <= len(peers["tasks"]) and "cem-peers" in out.stdout
    assert any("cem-peers" in v for v in summary["videos"])
