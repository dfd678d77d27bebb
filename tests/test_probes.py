import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from envs import Quantity
from tests.conftest import dataset_args
from tests.models import tiny_world_model
from worldmodel.evaluation import replay, rollout_probes, surprise
from worldmodel.evaluation.representation import stack_states, state_frames, table_latents
from worldmodel.evaluation.surprise import auroc
from worldmodel.probes import LinearProbe, MLPProbe, Targets, decode_columns, encode_values, pearson, physical_errors, r2_score

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(latent_dim=4, moving=True):
    """A tiny world model (k = 5) with a trained-head shape and a predictor that moves the state."""
    return tiny_world_model(block=5, moving=moving, hidden=32, depth=1, latent_dim=latent_dim, head_hidden=16).eval()


def test_linear_probe_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) * rng.uniform(0.1, 5, 6)
    w, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    y = x @ w + b
    probe = LinearProbe(alpha=0.0).fit(x, y)
    test = rng.normal(size=(50, 6))
    np.testing.assert_allclose(probe.predict(test), test @ w + b, atol=1e-9)
    np.testing.assert_allclose(r2_score(y, probe.predict(x)), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        LinearProbe().fit(np.full((4, 2), np.nan), np.zeros((4, 1)))


def test_r2_of_a_constant_prediction_is_zero_and_pearson_is_scale_free():
    y = np.random.default_rng(1).normal(size=(100, 2))
    np.testing.assert_allclose(r2_score(y, np.broadcast_to(y.mean(0), y.shape)), 0.0, atol=1e-12)
    np.testing.assert_allclose(pearson(y, 3 * y + 1), 1.0)
    np.testing.assert_allclose(pearson(y, np.zeros_like(y)), 0.0)


def test_mlp_probe_fits_a_nonlinear_map_a_linear_probe_cannot():
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, size=(3000, 1))
    y = np.abs(x)  # not linear in x
    lin = r2_score(y, LinearProbe().fit(x, y).predict(x))[0]
    mlp = r2_score(y, MLPProbe(steps=800, hidden=64).fit(x, y).predict(x))[0]
    assert lin < 0.1 and mlp > 0.95


def test_angles_are_probed_as_sin_cos_and_scored_in_radians_modulo_2pi():
    q = Quantity("hinges", "angle", "rad", 2)  # the kind decides, not the name
    values = np.array([[3.1, -0.5], [-3.1, 2.0]])
    np.testing.assert_allclose(decode_columns(q, encode_values(q, values)), values)
    off = encode_values(q, values + np.array([[0.1, 0.0], [-0.2, 2 * np.pi]]))  # wraps past +-pi, and a full turn
    errors = physical_errors(q, off, values)
    np.testing.assert_allclose(errors["hinges[0]"], [0.1, 0.2], atol=1e-9)
    np.testing.assert_allclose(errors["hinges[1]"], [0.0, 0.0], atol=1e-9)
    tip = Quantity("tip", "position", "m", 2)
    assert physical_errors(tip, np.array([[0.03, 0.04]]), np.zeros((1, 2)))["tip(distance)"] == pytest.approx(0.05)
    assert Targets([q, tip]).columns == ["sin(hinges[0])", "sin(hinges[1])", "cos(hinges[0])", "cos(hinges[1])",
                                         "tip[0]", "tip[1]"]
    with pytest.raises(ValueError, match="kind must be one of"):
        Quantity("speed", "speed", "m/s", 1)


def test_auroc_of_identical_scores_is_one_half_and_of_separated_scores_is_one():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    assert auroc(a, a) == pytest.approx(0.5)
    assert auroc(a, a + 100) == 1.0 and auroc(a + 100, a) == 0.0
    assert auroc([0, 1], [0.5]) == 0.5  # one of two negatives is below
    with pytest.raises(ValueError, match="both sides"):
        auroc([], [1.0])


def test_rollout_probe_at_horizon_zero_equals_the_frame_probe(tiny_dataset):
    model = tiny_model()
    test = tiny_dataset.split("heldout")
    raw = model.encoder.feature_table(test, progress=False)
    model.encoder.set_statistics(raw)
    targets = Targets.of(envs.get_spec("reacher"), test, ["joint_angles", "fingertip_xy"])
    k = model.layout.action_block
    rows = state_frames(test, model.layout)  # frames with one action block of their episode before them
    with torch.no_grad():  # states of real frames, the way the planner encodes them
        obs = torch.from_numpy(np.array(test.obs)).permute(0, 3, 1, 2)
        steps = rows - np.searchsorted(test.frame_starts, rows, side="right") + 1
        actions = torch.from_numpy(np.stack([test.actions[steps - k + j] for j in range(k)], 1))
        states = model.encode(torch.stack([obs[rows - k], obs[rows]], 1), actions).double().numpy()
    np.testing.assert_allclose(stack_states(table_latents(model.encoder, raw), test, rows, model.layout), states,
                               atol=1e-4)
    probe = LinearProbe().fit(states, targets.table(targets.values(test, rows)))
    out = rollout_probes(model, {"linear": probe}, targets, test, raw, horizon=2, window_stride=1)
    per = out["probes"]["linear"]
    assert per["rollout"][0] == per["true_frames"][0]
    assert out["latent_mse"][0] == 0 and out["latent_mse"][2] > 0
    # horizon 0 of each window is one of the real states probed above
    window = model.layout.window_frames(2)
    first = np.concatenate([s + k + np.arange(n - window + 1) for s, n in zip(test.frame_starts, test.lengths + 1)])
    direct = targets.errors(probe.predict(states[np.searchsorted(rows, first)]), targets.values(test, first))
    for name, errs in direct.items():  # equal up to float noise (the ViT ran on other batches; ~1e-6 in the states)
        assert per["true_frames"][0][name] == pytest.approx(float(np.median(errs)), rel=2e-3)


def test_replayed_events_happen_where_asked_and_the_colours_come_back(tiny_dataset):
    spec = envs.get_spec("reacher")
    test = tiny_dataset.split("heldout")
    env = envs.make_env("reacher", max_episode_steps=30)
    start, other = np.asarray(test.states[0]), np.asarray(test.states[test.frame_starts[1] + 5])
    actions = np.asarray(test.actions[:15])  # (R + h - 1) * k actions: two model steps
    plain = replay(env, spec, start, actions)
    np.testing.assert_array_equal(plain, test.obs[:16])  # the recording, image for image
    at = tiny_model().layout.event_action(1)  # inside model step 1: between images 10 and 15
    assert at == 12
    for event in ("teleport_arm", "colour"):
        changed = replay(env, spec, start, actions, event, at=at, other_state=other)
        np.testing.assert_array_equal(changed[: at + 1], plain[: at + 1])
        assert np.abs(changed[at + 1 :].astype(int) - plain[at + 1 :]).sum() > 0
    np.testing.assert_array_equal(replay(env, spec, start, actions), plain)  # the colours were restored
    with pytest.raises(ValueError, match="unknown perturbation"):
        replay(env, spec, start, actions, "explode", at=3)
    env.close()


def test_surprise_is_the_prediction_error_and_a_still_scene_surprises_only_when_teleported(tiny_dataset):
    spec = envs.get_spec("reacher")
    test = tiny_dataset.split("heldout")
    env = envs.make_env("reacher", max_episode_steps=30)
    still = np.asarray(test.states[0]).copy()
    still[4:] = 0.0  # at rest, and no torques: every image of the segment is the same
    other = np.asarray(test.states[test.frame_starts[1] + 5])
    actions = np.zeros((15, 2), np.float32)
    at = tiny_model().layout.event_action(1)
    runs = [replay(env, spec, still, actions), replay(env, spec, still, actions, "teleport_arm", at, other)]
    env.close()
    frames = torch.from_numpy(np.stack(runs)).permute(0, 1, 4, 2, 3)
    a = torch.from_numpy(np.stack([actions, actions]))
    # "nothing moves" (an untrained predictor) is exactly right about a still scene, and wrong once it jumps
    calm = tiny_model(moving=False)
    calm.encoder.set_statistics(calm.encoder.feature_table(test, progress=False))
    s = surprise(calm, frames, a)
    assert s.shape == (2, 2)
    assert s[0].abs().max() < 1e-10 and s[1, 0].abs() < 1e-10 and s[1, 1] > 1e-3
    # in general: the squared distance between the predicted and the encoded newest latent
    model = tiny_model()
    model.encoder.set_statistics(model.encoder.feature_table(test, progress=False))
    z = model.latents(frames[:, [0, 5, 10, 15]])
    blocks = a.reshape(2, 3, 10)
    s1 = model.predict(model.layout.compose(z[:, 1:3], blocks[:, 1:2]), blocks[:, 2])
    expected = ((model.newest(s1) - z[:, 3]) ** 2).mean(-1)
    torch.testing.assert_close(surprise(model, frames, a)[:, 1], expected)
    with pytest.raises(ValueError, match="no whole window"):
        surprise(model, frames[:, :15], a[:, :14])


def test_probe_entry_point_runs_end_to_end_on_a_tiny_model(tiny_dataset, tmp_path):
    model = tiny_model()
    model.encoder.set_statistics(model.encoder.feature_table(tiny_dataset.split("train"), progress=False))
    model.save_pretrained(tmp_path / "wm")
    cmd = [sys.executable, str(ROOT / "experiments" / "probe.py"), *dataset_args(tiny_dataset),
           f"model={tmp_path / 'wm'}", "train_probe_episodes=4", "mlp_steps=30", "horizon=2", "surprise_episodes=3",
           "surprise_steps=3", "event_step=1", "progress=false", f"output_dir={tmp_path}/out",
           f"hydra.run.dir={tmp_path}/h"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("probe-reacher-*.json")
    summary = json.loads(result.read_text())
    assert {r["representation"] for r in summary["frame_probes"].values()} == {
        "world_model", "encoder", "random_encoder", "pixels"}
    assert set(summary["surprise"]["auroc"]) == {"teleport_arm", "teleport_target", "teleport", "colour"}
    assert len(summary["rollout"]["latent_mse"]) == 3
    assert all(Path(p).stat().st_size > 0 for p in summary["plots"])
    table = result.with_suffix(".md").read_text()
    assert "| world_model | mlp |" in table and "joint_angles: rad" in table


def test_the_state_model_benchmark_trains_on_poses_and_plans_the_held_out_tasks(tiny_dataset, tmp_path):
    out = tmp_path / "state.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "state_model.py"), "--data", str(tiny_dataset.path),
                          "--steps", "30", "--tasks", "2", "--goal-offset", "5", "--budget", "6", "--rollout", "2",
                          "--horizon", "3", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tasks"] == 2 and len(result["val_rollout_by_horizon"]) == 2 and result["horizon"] == 3
    threshold = envs.get_spec("reacher").success_threshold
    assert result["successes"] == sum(e <= threshold for e in result["best_goal_errors"])
    assert result["plans_audited"] >= 2 and len(result["plan_error_mean_by_block"]) == 3  # a plan per task at least
    for split in ("val", "train"):
        assert sum(b["share"] for b in result["rollout_by_turn"][split]) == pytest.approx(1.0)


def test_the_state_model_benchmark_plans_again_with_the_model_it_saved(tiny_dataset, tmp_path):
    common = [sys.executable, str(ROOT / "benchmarks" / "state_model.py"), "--data", str(tiny_dataset.path),
              "--tasks", "2", "--goal-offset", "5", "--budget", "6", "--rollout", "2", "--samples", "40",
              "--iterations", "2"]
    saved, again = tmp_path / "saved.json", tmp_path / "again.json"
    run = subprocess.run(common + ["--steps", "30", "--hidden", "64", "--depth", "2", "--save", str(tmp_path / "m.pt"),
                                   "--out", str(saved)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    run = subprocess.run(common + ["--load", str(tmp_path / "m.pt"), "--out", str(again)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    first, second = json.loads(saved.read_text()), json.loads(again.read_text())
    assert second["loaded"] == str(tmp_path / "m.pt") and second["steps"] is None
    assert (second["hidden"], second["depth"]) == (64, 2)  # the saved predictor's size, not the defaults
    assert second["val_rollout_by_horizon"] == first["val_rollout_by_horizon"]
    assert second["best_goal_errors"] == first["best_goal_errors"]
    run = subprocess.run(common + ["--load", str(tmp_path / "m.pt"), "--cost", "pose", "--out", str(again)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "is not Push-T" in run.stderr
    # an ensemble of the model with itself: no spread, so the same plans as the model alone
    run = subprocess.run(common + ["--load", str(tmp_path / "m.pt"), "--ensemble", str(tmp_path / "m.pt"),
                                   "--disagreement", "5", "--out", str(again)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ensemble = json.loads(again.read_text())
    assert ensemble["ensemble"] == [str(tmp_path / "m.pt")] and ensemble["disagreement"] == 5
    assert ensemble["best_goal_errors"] == first["best_goal_errors"]
    run = subprocess.run(common + ["--ensemble", str(tmp_path / "m.pt"), "--out", str(again)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "give --load too" in run.stderr


def state_model_benchmark():
    """``benchmarks/state_model.py`` as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("state_model", ROOT / "benchmarks" / "state_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_state_model_pose_cost_is_the_pusht_success_test():
    """The pose cost read from standardised latents is ``envs.pusht.pose_error`` of the states they encode."""
    bench = state_model_benchmark()
    from envs.pusht import pose_error

    rng = np.random.default_rng(0)
    states = np.concatenate([rng.uniform(50, 450, (64, 4)), rng.uniform(-3 * np.pi, 3 * np.pi, (64, 1))], 1)
    poses = np.concatenate([states[:, :4], np.cos(states[:, 4:]), np.sin(states[:, 4:])], 1)
    mean, std = poses.mean(0), poses.std(0)
    z = torch.as_tensor((poses - mean) / std, dtype=torch.float64)
    pose = bench.pusht_pose(z, torch.as_tensor(mean), torch.as_tensor(std))
    errors = bench.pusht_pose_error(pose[1:], pose[0]).numpy()
    expected = [pose_error(s, states[0]) for s in states[1:]]
    np.testing.assert_allclose(errors, expected, rtol=1e-6)


def test_the_state_model_audits_its_plan_against_what_the_env_then_does():
    """The audit replays the chosen plan on a scratch env: its first block's pose is the one the env reaches when the
    agent plays that block, and the env is not moved by the audit."""
    from planners.cem import CEMConfig
    from worldmodel.dynamics import StateLayout

    bench, spec = state_model_benchmark(), envs.get_spec("pusht")
    env = envs.make_env("pusht", image_size=16)
    env.reset(seed=3)
    torch.manual_seed(0)
    model = bench.StateModel(StateLayout(6, 2, 5, 2), np.full(6, 200.0), np.full(6, 100.0), hidden=32, depth=1)
    agent = bench.StateAgent(model, spec, env, CEMConfig(samples=20, elites=2, iterations=2), horizon=2, seed=0)
    agent.set_goal_state(spec.get_state(env))
    agent.reset(None)
    before = spec.get_state(env)
    actions = [agent.act(None)]
    np.testing.assert_array_equal(spec.get_state(env), before)  # planning and its audit leave the env alone
    env.step(actions[0])
    while agent.queue:
        actions.append(agent.act(None))
        env.step(actions[-1])
    assert len(actions) == 5 and len(agent.plan_errors) == 1 and len(agent.plan_errors[0]) == 2
    reached = model.latents(bench.pose_features(spec, env.unwrapped.physics()))
    torch.testing.assert_close(agent.last_audit[1][0], reached[0])


def test_the_state_models_simulator_mode_gives_the_cost_the_poses_the_env_reaches():
    from planners.cem import CEMConfig
    from worldmodel.dynamics import StateLayout

    bench, spec = state_model_benchmark(), envs.get_spec("pusht")
    env, other = envs.make_env("pusht", image_size=16), envs.make_env("pusht", image_size=16)
    env.reset(seed=1)
    other.reset(seed=1)
    model = bench.StateModel(StateLayout(6, 2, 5, 2), np.full(6, 200.0), np.full(6, 100.0), hidden=32, depth=1)
    agent = bench.StateAgent(model, spec, env, CEMConfig(samples=20, elites=2, iterations=2), horizon=2, seed=0,
                             simulator=True)
    blocks = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (3, 2, 10)), dtype=torch.float32)
    frames = agent.simulated_frames(blocks)  # (S, H, 2, d): the block before, then this block's end
    assert frames.shape == (3, 2, 2, 6)
    for plan, got in zip(blocks, frames):
        spec.set_state(other, spec.get_state(env))
        reached = []
        for action in plan.reshape(-1, 2).numpy():
            other.step(action)
            reached.append(model.latents(bench.pose_features(spec, other.unwrapped.physics()))[0])
        torch.testing.assert_close(got[:, 1], torch.stack([reached[4], reached[9]]))
        torch.testing.assert_close(got[1, 0], got[0, 1])
        torch.testing.assert_close(got[0, 0], model.latents(bench.pose_features(spec, env.unwrapped.physics()))[0])
    reacher = envs.make_env("reacher")
    with pytest.raises(ValueError, match="simulate"):
        bench.StateAgent(model, envs.get_spec("reacher"), reacher, CEMConfig(), horizon=2, seed=0, simulator=True)


def test_the_state_models_velocities_are_the_pusht_states_own_after_its_pose():
    bench, spec = state_model_benchmark(), envs.get_spec("pusht")
    env = envs.make_env("pusht", image_size=16)
    env.reset(seed=0)
    states, physics = [], []
    for action in np.random.default_rng(0).uniform(env.action_space.low, env.action_space.high, (12, 2)):
        env.step(action)
        states.append(spec.get_state(env))
        physics.append(env.unwrapped.physics())
    states = np.array(states)
    physics = {k: np.stack([p[k] for p in physics]) for k in physics[0]}
    pose = bench.frame_features(spec, physics, states, velocities=False)
    with_velocities = bench.frame_features(spec, physics, states, velocities=True)
    np.testing.assert_array_equal(with_velocities[:, : pose.shape[1]], pose)
    np.testing.assert_array_equal(with_velocities[:, pose.shape[1]:], states[:, 5:])  # agent, T and angular velocity
    assert np.abs(states[:, 5:7]).max() > 0  # the agent moved: the velocities are not all zero
    with pytest.raises(ValueError, match="'reacher' lays its state out otherwise"):
        bench.frame_features(envs.get_spec("reacher"), {}, np.zeros((1, 8)), velocities=True)
