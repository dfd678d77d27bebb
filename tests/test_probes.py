import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from experiments.probe import rollout_probes, state_rows, stack
from worldmodel.checkpoint import save_checkpoint
from worldmodel.configs import ProbeConfig
from worldmodel.dynamics import encode_frames
from worldmodel.dynamics_trainer import world_model_config
from worldmodel.encoder import EncoderConfig, ViTEncoder
from worldmodel.probes import LinearProbe, MLPProbe, Quantity, Targets, pearson, r2_score
from worldmodel.surprise import auroc, event_action, replay, surprise
from worldmodel.world_model import DynamicsConfig, LatentWorldModel

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(latent_dim=4) -> LatentWorldModel:
    torch.manual_seed(0)
    cfg = DynamicsConfig(pool=2, project_dim=0, action_block=5, hidden=32, depth=1, latent_dim=latent_dim,
                         head_hidden=16)
    model = LatentWorldModel(ViTEncoder(EncoderConfig(size="tiny")), cfg, 2)
    torch.nn.init.normal_(model.f[-1].weight, std=0.1)  # a predictor that moves the state
    return model.eval()


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
    q = Quantity("joint_angles", 2)
    values = np.array([[3.1, -0.5], [-3.1, 2.0]])
    np.testing.assert_allclose(q.decode(q.encode(values)), values)
    off = q.encode(values + np.array([[0.1, 0.0], [-0.2, 2 * np.pi]]))  # wraps past +-pi, and a full turn
    errors = q.errors(off, values)
    np.testing.assert_allclose(errors["joint_angles[0]"], [0.1, 0.2], atol=1e-9)
    np.testing.assert_allclose(errors["joint_angles[1]"], [0.0, 0.0], atol=1e-9)
    tip = Quantity("fingertip_xy", 2)
    assert tip.errors(np.array([[0.03, 0.04]]), np.zeros((1, 2)))["fingertip_xy(distance)"] == pytest.approx(0.05)


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
    raw = encode_frames(model, test, progress=False)
    model.set_latent_stats(raw)
    targets = Targets.of(test, ["joint_angles", "fingertip_xy"])
    k = model.cfg.action_block
    rows = state_rows(test, k)  # frames with one action block of their episode before them
    with torch.no_grad():  # states of real frames, the way the planner encodes them
        obs = torch.from_numpy(np.array(test.obs)).permute(0, 3, 1, 2)
        steps = rows - np.searchsorted(test.frame_starts, rows, side="right") + 1
        actions = torch.from_numpy(np.stack([test.actions[steps - k + j] for j in range(k)], 1))
        states = model.encode(torch.stack([obs[rows - k], obs[rows]], 1), actions).double().numpy()
    features = model.target_head((raw - model.latent_mean) / model.latent_std).detach().numpy()
    np.testing.assert_allclose(stack(features, test, rows, 2, k), states, atol=1e-4)
    probe = LinearProbe().fit(states, targets.table(targets.values(test, rows)))
    cfg = ProbeConfig(horizon=2, window_stride=1, heldout_episodes=2)
    out = rollout_probes(model, {"linear": probe}, targets, test, raw, cfg)
    per = out["probes"]["linear"]
    assert per["rollout"][0] == per["true_frames"][0]
    assert out["latent_mse"][0] == 0 and out["latent_mse"][2] > 0
    # horizon 0 of each window is one of the real states probed above
    window = (2 + 2 - 1) * k + 1  # (R + h - 1) * k + 1 frames
    first = np.concatenate([s + k + np.arange(n - window + 1) for s, n in zip(test.frame_starts, test.lengths + 1)])
    direct = targets.errors(probe.predict(states[np.searchsorted(rows, first)]), targets.values(test, first))
    for name, errs in direct.items():
        assert per["true_frames"][0][name] == pytest.approx(float(np.median(errs)), rel=1e-4)


def test_events_change_what_is_replayed_and_surprise_rises_at_the_event(tiny_dataset):
    spec = envs.get_spec("reacher")
    test = tiny_dataset.split("heldout")
    env = envs.make_env("reacher", max_episode_steps=30)
    start, other = np.asarray(test.states[0]), np.asarray(test.states[test.frame_starts[1] + 5])
    actions = np.asarray(test.actions[:15])  # (R + h - 1) * k actions: two model steps
    plain = replay(env, spec, start, actions)
    np.testing.assert_array_equal(plain, test.obs[:16])  # the recording, image for image
    at = event_action(tiny_model(), 1)  # inside model step 1: between images 10 and 15
    assert at == 12
    arm = replay(env, spec, start, actions, "teleport_arm", at=at, other_state=other)
    np.testing.assert_array_equal(arm[: at + 1], plain[: at + 1])
    assert np.abs(arm[at + 1 :].astype(int) - plain[at + 1 :]).sum() > 0
    colour = replay(env, spec, start, actions, "colour", at=at)
    np.testing.assert_array_equal(colour[: at + 1], plain[: at + 1])
    assert np.abs(colour[at + 1 :].astype(int) - plain[at + 1 :]).sum() > 0
    np.testing.assert_array_equal(replay(env, spec, start, actions), plain)  # the colours were restored
    with pytest.raises(ValueError, match="unknown perturbation"):
        replay(env, spec, start, actions, "explode", at=3)
    env.close()
    model = tiny_model()
    model.set_latent_stats(encode_frames(model, test, progress=False))
    frames = torch.from_numpy(np.stack([plain, arm])).permute(0, 1, 4, 2, 3)
    s = surprise(model, frames, torch.from_numpy(np.stack([actions, actions])).float())
    assert s.shape == (2, 2)
    torch.testing.assert_close(s[0, 0], s[1, 0])  # identical before the event
    assert s[1, 1] != s[0, 1]


def test_probe_entry_point_runs_end_to_end_on_a_tiny_model(tiny_dataset, tmp_path):
    model = tiny_model()
    model.set_latent_stats(encode_frames(model, tiny_dataset.split("train"), progress=False))
    save_checkpoint(tmp_path / "wm", world_model_config(model), model.state_dict())
    m = tiny_dataset.manifest
    cmd = [sys.executable, str(ROOT / "experiments" / "probe.py"), f"root={tiny_dataset.path.parent}",
           f"name={tiny_dataset.path.name}", "env.episode_steps=20", f"train_episodes={m['splits']['train']['episodes']}",
           f"val_episodes={m['splits']['val']['episodes']}", f"heldout_episodes={m['splits']['heldout']['episodes']}",
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
    assert "| world_model | mlp |" in result.with_suffix(".md").read_text()
