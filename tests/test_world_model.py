import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from planners import CEMConfig
from planners.oracle import OracleAgent
from worldmodel.checkpoint import save_checkpoint
from worldmodel.dynamics import DynamicsTrainConfig, WindowBatches, encode_frames, evaluate
from worldmodel.dynamics_trainer import DynamicsTrainer, load_world_model, world_model_config
from worldmodel.encoder import EncoderConfig, ViTEncoder
from worldmodel.evaluation import evaluate as evaluate_agent
from worldmodel.evaluation import sample_goal_tasks
from worldmodel.world_model import DynamicsConfig, LatentWorldModel

ROOT = Path(__file__).resolve().parents[1]


def tiny_world_model(block=2) -> LatentWorldModel:
    torch.manual_seed(0)
    cfg = DynamicsConfig(pool=2, project_dim=0, latent_dim=0, action_block=block, hidden=64, depth=2)
    return LatentWorldModel(ViTEncoder(EncoderConfig(size="tiny")), cfg, 2)


def test_rollout_equals_repeated_predict():
    model = tiny_world_model()
    torch.nn.init.normal_(model.f[-1].weight, std=0.1)  # a non-trivial predictor
    s0, actions = torch.randn(3, model.state_dim), torch.rand(3, 4, model.block_dim) * 2 - 1
    states, s = model.rollout(s0, actions), s0
    for h in range(4):
        s = model.predict(s, actions[:, h])
        assert torch.allclose(states[:, h], s)
        # the state shifts: the old newest latent moves back, the block just applied is stored last
        assert torch.equal(s[:, : model.frame_dim], (s0 if h == 0 else states[:, h - 1])[:, model.frame_dim : 2 * model.frame_dim])
        assert torch.equal(s[:, -model.block_dim :], actions[:, h])
    with pytest.raises(ValueError, match="action block must have 4 values"):
        model.predict(s0, torch.zeros(3, 3))


def test_states_are_standardised_and_deterministic(tiny_dataset):
    model = tiny_world_model()
    train = tiny_dataset.split("train")
    raw = encode_frames(model, train, progress=False)
    model.set_latent_stats(raw)
    obs = torch.from_numpy(np.array(train.obs[:64])).permute(0, 3, 1, 2)
    z = (raw[:64] - raw.mean(0)) / raw.std(0).clamp_min(1e-6)
    s = model.encode(obs)  # one image: a still scene, the latent repeated, zero torques between
    assert torch.allclose(s, torch.cat([z, z, torch.zeros(64, model.block_dim)], 1), atol=1e-4)
    a = torch.rand(62, 2, 2)  # the actions between frames t and t + 2 (one block apart)
    pairs = model.encode(torch.stack([obs[:-2], obs[2:]], 1), a)
    assert torch.allclose(pairs, torch.cat([z[:-2], z[2:], a.flatten(1)], 1), atol=1e-4)
    assert torch.allclose(model.newest(pairs), z[2:], atol=1e-4)
    assert torch.equal(model.encode(obs), s)
    with pytest.raises(ValueError, match=r"frames must be \(B, 2, C, H, W\)"):
        model.encode(obs[:, None].expand(-1, 3, -1, -1, -1))
    with pytest.raises(ValueError, match=r"actions must be \(B, 2, 2\)"):
        model.encode(torch.stack([obs[:-2], obs[2:]], 1), a[:, :1])


def test_predictor_learns_beyond_the_copy_baseline(tiny_dataset, tmp_path):
    model = tiny_world_model()
    raw = {s: encode_frames(model, tiny_dataset.split(s), progress=False) for s in ("train", "val")}
    model.set_latent_stats(raw["train"])
    batches = {s: WindowBatches(model, tiny_dataset.split(s), raw[s], rollout_steps=3) for s in raw}
    before = evaluate(model, batches["val"])  # zero-initialised residual: predicts "nothing moves"
    cfg = DynamicsTrainConfig(steps=300, batch_size=64, lr=3e-3, warmup_steps=10, log_every=100, rollout_steps=3,
                              progress=False)
    DynamicsTrainer(model, cfg, batches["train"], batches["val"], tmp_path, {}).run()
    after = evaluate(model, batches["train"])
    assert after["one_step"] < 0.7 * before["one_step"]


def test_world_model_checkpoint_round_trip(tmp_path):
    model = tiny_world_model()
    torch.nn.init.normal_(model.f[-1].weight, std=0.1)
    save_checkpoint(tmp_path / "wm", world_model_config(model), model.state_dict())
    back = load_world_model(tmp_path / "wm")
    s0, a = torch.randn(2, model.state_dim), torch.rand(2, 3, model.block_dim)
    assert torch.equal(back.rollout(s0, a), model.rollout(s0, a))
    (tmp_path / "wm" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="corrupt"):
        load_world_model(tmp_path / "wm")


def test_oracle_planner_reaches_reacher_goals(tiny_dataset):
    spec = envs.get_spec("reacher")
    tasks = sample_goal_tasks(tiny_dataset.split("heldout"), spec, 3, 10, np.random.default_rng(0))
    env = envs.make_env("reacher", max_episode_steps=30)
    agent = OracleAgent(env, spec, CEMConfig(samples=200, elites=20, iterations=5), horizon=10, receding_horizon=2,
                        generator=torch.Generator().manual_seed(0))
    summary, _ = evaluate_agent(env, spec, tasks, agent, budget=30, progress=False)
    assert summary["successes"] == 3
    env.close()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    model = tiny_world_model(block=5)
    path = tmp_path_factory.mktemp("wm") / "model"
    save_checkpoint(path, world_model_config(model), model.state_dict())
    return path


def test_plan_runs_end_to_end_with_a_world_model(tiny_dataset, tiny_model_dir, tmp_path):
    m = tiny_dataset.manifest
    cmd = [sys.executable, str(ROOT / "experiments" / "plan.py"), f"root={tiny_dataset.path.parent}",
           f"name={tiny_dataset.path.name}", "env.episode_steps=20", f"train_episodes={m['splits']['train']['episodes']}",
           f"model={tiny_model_dir}", "episodes=2", "goal_offset=10", "budget=10", "mpc.cem.samples=20",
           "mpc.cem.elites=4", "mpc.cem.iterations=2", "videos=1", "progress=false", f"output_dir={tmp_path}/out",
           f"hydra.run.dir={tmp_path}/h"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("plan-reacher-*.json")
    summary = json.loads(result.read_text())
    assert [r["agent"] for r in summary["results"]] == ["cem-mpc", "random", "zero"]
    assert summary["results"][0]["replans"] == 4 and summary["results"][0]["mean_plan_ms"] > 0
    (video,) = summary["videos"]
    assert Path(video).stat().st_size > 0


def test_projection_keeps_the_top_principal_components(tiny_dataset):
    torch.manual_seed(0)
    model = LatentWorldModel(ViTEncoder(EncoderConfig(size="tiny")), DynamicsConfig(pool=2, project_dim=8, latent_dim=0), 2)
    from worldmodel.dynamics import fit_projection

    fit_projection(model, tiny_dataset.split("train"), frames=126)
    obs = torch.from_numpy(np.array(tiny_dataset.split("train").obs[:126])).permute(0, 3, 1, 2)
    pooled, states = model.pooled(obs), model.raw_latent(obs)
    assert states.shape == (126, 8)
    centred = pooled - pooled.mean(0)
    top = torch.linalg.svdvals(centred)[:8] ** 2
    # the projection captures (almost) the variance of the top 8 components, in decreasing order
    var = (states**2).sum(0)
    assert torch.allclose(var, top, rtol=0.05)
    assert model.frame_dim == 8 and model.state_dim == 2 * 8 + 5 * 2  # two latents and one block of 5 actions


def test_global_standardisation_keeps_relative_variances():
    torch.manual_seed(0)
    model = LatentWorldModel(ViTEncoder(EncoderConfig(size="tiny")),
                             DynamicsConfig(pool=2, project_dim=0, standardize="global"), 2)
    raw = torch.randn(500, model.feature_dim) * torch.linspace(0.1, 3.0, model.feature_dim)
    model.set_latent_stats(raw)
    z = (raw - model.latent_mean) / model.latent_std
    var = z.var(0)
    assert var.mean().item() == pytest.approx(1.0, rel=0.01)
    assert var[-1] / var[0] > 100  # the large components stay large
    with pytest.raises(ValueError, match="standardize"):
        DynamicsConfig(standardize="minmax")


def test_the_shipped_model_plans_better_than_random(tmp_path):
    """The shipped default model against random torques on 40 fresh held-out tasks (goal 10
    steps ahead, 20 steps of budget): its closest approach to the goal must be the better one
    on at least 27 tasks (one-sided sign test: p = 0.019 if neither policy were better)."""
    from math import comb

    from envs import EnvConfig
    from planners.mpc import LatentMPCAgent, MPCConfig
    from worldmodel.data import build_dataset, open_dataset
    from worldmodel.evaluation import RandomAgent

    from .conftest import tiny_collect_config

    assert sum(comb(40, k) for k in range(27, 41)) / 2**40 < 0.02
    cfg = tiny_collect_config(tmp_path, env=EnvConfig(episode_steps=25), train_episodes=1, val_episodes=0,
                              heldout_episodes=40, eval_seed=4242)
    heldout = open_dataset(build_dataset(cfg)).split("heldout")
    model = load_world_model(ROOT / "models" / "reacher")
    spec = envs.get_spec("reacher")
    tasks = sample_goal_tasks(heldout, spec, 40, 10, np.random.default_rng(0))
    env = envs.make_env("reacher", max_episode_steps=20)
    mpc = MPCConfig(horizon=3, receding_horizon=5, cem=CEMConfig(samples=100, elites=10, iterations=5))
    planner = LatentMPCAgent(model, mpc, env.action_space.low, env.action_space.high, 5, torch.Generator().manual_seed(0))
    random = RandomAgent(env.action_space, np.random.default_rng(1))
    _, planned = evaluate_agent(env, spec, tasks, planner, budget=20, progress=False)
    _, flailed = evaluate_agent(env, spec, tasks, random, budget=20, progress=False)
    env.close()
    better = sum(p.best_goal_error < r.best_goal_error for p, r in zip(planned, flailed))
    assert better >= 27, [(round(p.best_goal_error, 3), round(r.best_goal_error, 3)) for p, r in zip(planned, flailed)]
