import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import envs
from planners import CEMConfig
from planners.mpc import LatentMPCAgent, MPCConfig
from planners.oracle import OracleAgent
from tests.conftest import dataset_args
from tests.models import tiny_conv_world_model, tiny_world_model
from worldmodel.checkpoint import CheckpointError, load_config, load_weights, save_checkpoint
from worldmodel.dynamics import (
    DynamicsConfig,
    DynamicsObjective,
    DynamicsTrainConfig,
    StateLayout,
    WindowBatches,
    WorldModel,
    validate,
)
from worldmodel.evaluation import evaluate_agent, sample_goal_tasks
from worldmodel.dynamics.nets import KeypointHead
from worldmodel.jepa.vit import normalize_images
from worldmodel.training import Trainer

ROOT = Path(__file__).resolve().parents[1]


def prepared(model: WorldModel, dataset, splits=("train", "val")) -> dict:
    """Fit the model's encoder on the train split; the feature tables of ``splits``."""
    model.encoder.prepare(dataset.split("train"), seed=0, progress=False)
    return {s: model.encoder.feature_table(dataset.split(s), progress=False) for s in splits}


def test_state_layout_owns_the_window_arithmetic():
    L = StateLayout(latent_dim=3, history=2, action_block=5, action_dim=2)
    assert (L.block_dim, L.state_dim, L.span) == (10, 2 * 3 + 10, 5)
    assert L.window_frames(3) == 21 and L.steps_in(21) == 3  # (3 + 1) * 5 + 1 frames
    assert L.boundaries(3).tolist() == [0, 5, 10, 15, 20] and L.newest_frames(3).tolist() == [5, 10, 15, 20]
    assert L.event_action(1) == 12  # halfway through the block that ends model step 1
    with pytest.raises(ValueError, match="no whole window"):
        L.steps_in(20)
    z, blocks = torch.randn(4, 5, 3), torch.randn(4, 4, 10)
    states = L.window_states(z, blocks)  # (B, R + 1, state_dim)
    assert states.shape == (4, 4, 16)
    for r in range(4):
        assert torch.equal(L.frame_latents(states[:, r]), z[:, r : r + 2])
        assert torch.equal(L.newest(states[:, r]), z[:, r + 1])
    # one model step shifts the window by one block boundary
    assert torch.equal(L.shift(states[:, 0], z[:, 2], blocks[:, 1]), states[:, 1])
    actions = torch.randn(4, 15, 2)
    assert torch.equal(L.blocks(actions)[:, 1], actions[:, 5:10].flatten(1))
    frames = L.state_frames(np.array([0, 21]), np.array([20, 20]))  # two episodes of 20 steps
    assert frames.tolist() == list(range(5, 21)) + list(range(26, 42))


def test_rollout_equals_repeated_predict():
    model = tiny_world_model(moving=True)
    s0, actions = torch.randn(3, model.state_dim), torch.rand(3, 4, model.block_dim) * 2 - 1
    states, s = model.rollout(s0, actions), s0
    d = model.latent_dim
    for t in range(4):
        s = model.predict(s, actions[:, t])
        assert torch.allclose(states[:, t], s)
        # the state shifts: the old newest latent moves back, the block just applied is stored last
        assert torch.equal(s[:, :d], (s0 if t == 0 else states[:, t - 1])[:, d : 2 * d])
        assert torch.equal(s[:, -model.block_dim :], actions[:, t])
    with pytest.raises(ValueError, match="action block must have 4 values"):
        model.predict(s0, torch.zeros(3, 3))


def test_predictor_dropout_acts_in_training_only():
    model = tiny_world_model(moving=True, dropout=0.5)
    s, a = torch.randn(4, model.state_dim), torch.rand(4, model.block_dim)
    model.train()
    assert not torch.equal(model.predict(s, a), model.predict(s, a))
    model.eval()
    assert torch.equal(model.predict(s, a), model.predict(s, a))
    with pytest.raises(ValueError, match="dropout"):
        DynamicsConfig(dropout=1.0)


def test_states_are_standardised_and_deterministic(tiny_dataset):
    model = tiny_world_model()
    train = tiny_dataset.split("train")
    raw = prepared(model, tiny_dataset, ("train",))["train"]
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
    with pytest.raises(ValueError, match="must be uint8"):
        model.encode(obs.float() / 255)


def train_tiny(model, dataset, tmp_path, steps=300, **settings):
    tables = prepared(model, dataset)
    cfg = DynamicsTrainConfig(**{**dict(steps=steps, batch_size=64, lr=3e-3, warmup_steps=10, log_every=100,
                                        rollout_steps=3, progress=False), **settings})
    batches = {s: WindowBatches(model, dataset.split(s), tables[s], cfg.rollout_steps) for s in tables}
    before = validate(model, batches["val"])
    Trainer(DynamicsObjective(model, cfg, batches["train"], batches["val"]), cfg, tmp_path).run()
    return batches, before


def test_predictor_learns_beyond_the_copy_baseline_on_held_out_windows(small_dataset, tmp_path):
    """Measured: validation one-step MSE 0.86 -> 0.56, rollout 1.17 -> 0.73 (8 principal components)."""
    model = tiny_world_model(project_dim=8)
    batches, before = train_tiny(model, small_dataset, tmp_path)  # before: zero residual, "nothing moves"
    after = validate(model, batches["val"])  # validation episodes, never trained on
    assert after["one_step"] < 0.8 * before["one_step"], (before, after)
    assert after["rollout"] < 0.8 * before["rollout"], (before, after)


def test_conv_encoder_trains_end_to_end_against_its_ema_target(tiny_dataset, tmp_path):
    model = tiny_conv_world_model()
    start = copy.deepcopy(model.encoder.head.state_dict())
    batches, _ = train_tiny(model, tiny_dataset, tmp_path, steps=150, batch_size=32, log_every=50, ema=0.9)
    assert batches["train"].table[torch.tensor([[0, 1]])].shape == (1, 2, 3, 64, 64)  # the frames themselves
    moved = [k for k, v in model.encoder.head.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("conv.0.") for k in moved)  # gradients reach the first conv layer
    # planning reads the EMA target encoder, which trails the online one
    obs = torch.from_numpy(np.array(tiny_dataset.split("val").obs[:16])).permute(0, 3, 1, 2)
    assert torch.allclose(model.latents(obs), model.encoder.target_head(obs))
    assert not torch.allclose(model.encoder.target_head(obs), model.encoder.head(obs))
    # in the learned space the predictor beats "nothing moves", and the latents did not collapse
    x, a = batches["train"].sample(256, torch.Generator().manual_seed(1))
    z = model.encoder.latents(x, target=True)
    states = model.layout.window_states(z, a)[:, :-1]
    with torch.no_grad():
        pred = model.newest(model.predict(states, a[:, 1:]))
    copy_error = F.mse_loss(z[:, 1:-1], z[:, 2:]).item()
    assert F.mse_loss(pred, z[:, 2:]).item() < 0.7 * copy_error
    assert validate(model, batches["val"])["latent_std"] > 0.1
    # the inverse-dynamics head reads the torques from pairs of latents better than their mean (0) does
    terms = validate(model, batches["train"])
    assert terms["inverse"] < 0.8 * (a**2).mean().item(), terms
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 64, 64\)"):
        model.latents(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="conv encoder needs latent_dim"):
        DynamicsConfig(encoder="conv", latent_dim=0)
    with pytest.raises(ValueError, match="unknown encoder"):
        DynamicsConfig(encoder="resnet")


def test_pixel_encoder_learns_a_head_on_pooled_pixels_and_saves_with_it(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    cfg = DynamicsConfig(encoder="pixels", pool=8, project_dim=0, latent_dim=8, head_hidden=32, action_block=2,
                         hidden=64, depth=2)
    model = WorldModel.build(cfg, 2, image_shape=(3, 64, 64))
    obs = torch.from_numpy(np.array(tiny_dataset.split("val").obs[:16])).permute(0, 3, 1, 2)
    # its fixed features are the image averaged over 8 x 8 pixel squares, normalised as the ViT's input
    expected = F.avg_pool2d(normalize_images(obs), 8).flatten(1)
    assert model.encoder.features(obs).shape == (16, 3 * 8 * 8) and not model.encoder.pretrained
    assert torch.allclose(model.encoder.features(obs), expected, atol=1e-5)
    start = copy.deepcopy(model.encoder.head.state_dict())
    batches, _ = train_tiny(model, tiny_dataset, tmp_path, steps=150, batch_size=32, log_every=50, ema=0.9)
    assert all(not torch.equal(v, start[k]) for k, v in model.encoder.head.state_dict().items())
    x, a = batches["train"].sample(256, torch.Generator().manual_seed(1))
    z = model.encoder.latents(x, target=True)
    with torch.no_grad():
        pred = model.newest(model.predict(model.layout.window_states(z, a)[:, :-1], a[:, 1:]))
    assert F.mse_loss(pred, z[:, 2:]).item() < 0.7 * F.mse_loss(z[:, 1:-1], z[:, 2:]).item()  # beats "nothing moves"
    assert validate(model, batches["val"])["latent_std"] > 0.1
    model.save_pretrained(tmp_path / "model")
    loaded = WorldModel.from_pretrained(tmp_path / "model")
    assert type(loaded.encoder).__name__ == "PixelFrames" and torch.equal(loaded.latents(obs), model.eval().latents(obs))
    baseline = model.encoder.random_baseline(tiny_dataset.split("train"), seed=0)  # the standardised pixels
    assert baseline.latent_dim == 3 * 8 * 8
    assert torch.allclose(baseline.latents(baseline.features(obs)),
                          (expected - model.encoder.feature_mean) / model.encoder.feature_std, atol=1e-4)
    with pytest.raises(ValueError, match="pool 7 must divide the image sides 64x64"):
        WorldModel.build(DynamicsConfig(encoder="pixels", pool=7, project_dim=0), 2, image_shape=(3, 64, 64))


def test_keypoint_head_reads_where_a_blob_is_and_trains_saves_and_loads(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    head = KeypointHead("(c h w)", {"c": 1, "h": 16, "w": 16}, width=8, hidden=16, out_dim=4)
    with torch.no_grad():  # keypoint map 0 = the mean of each 2 x 2 cell of the input; the others flat
        for p in head.parameters():
            p.zero_()
        head.conv[0].weight[0, 0, 1:3, 1:3] = 0.25
        head.conv[1].weight.fill_(1.0)  # GroupNorm's scale
        head.conv[3].weight[0, 0, 1, 1] = 1.0
        head.log_temperature.fill_(3.0)
    maps, points = [], []
    for x in (2, 12):  # a bright 2 x 2 blob on the left, then on the right
        grid = torch.zeros(1, 1, 16, 16)
        grid[..., 6:8, x:x + 2] = 10.0
        maps.append(grid.flatten(1))
        with torch.no_grad():
            logits = head.conv(grid).flatten(2) * head.log_temperature.exp()[:, None]
        points.append((logits.softmax(-1) @ head.coords)[0, 0])
    assert points[0][0] < -0.5 and points[1][0] > 0.5  # the keypoint moved right with the blob ...
    assert abs(points[0][1] - points[1][1]) < 1e-4  # ... and not up or down
    assert head(torch.stack(maps)).shape == (2, 1, 4)
    cfg = DynamicsConfig(encoder="pixels", pool=8, project_dim=0, latent_dim=8, head="keypoints", conv_width=8,
                         head_hidden=32, action_block=2, hidden=64, depth=2)
    model = WorldModel.build(cfg, 2, image_shape=(3, 64, 64))
    assert isinstance(model.encoder.head, KeypointHead)
    start = copy.deepcopy(model.encoder.head.state_dict())
    batches, _ = train_tiny(model, tiny_dataset, tmp_path, steps=100, batch_size=32, log_every=50, ema=0.9)
    assert not torch.equal(model.encoder.head.conv[0].weight, start["conv.0.weight"])
    assert validate(model, batches["val"])["latent_std"] > 0.1
    model.save_pretrained(tmp_path / "model")
    obs = torch.from_numpy(np.array(tiny_dataset.split("val").obs[:8])).permute(0, 3, 1, 2)
    loaded = WorldModel.from_pretrained(tmp_path / "model")
    assert isinstance(loaded.encoder.head, KeypointHead)
    assert torch.equal(loaded.latents(obs), model.eval().latents(obs))
    baseline = model.encoder.random_baseline(tiny_dataset.split("train"), seed=0)  # the probes' baseline: no head
    assert baseline.latent_dim == 3 * 8 * 8 and baseline.latents(baseline.features(obs)).shape == (8, 3 * 8 * 8)
    with pytest.raises(ValueError, match="head=keypoints .* project_dim=0"):
        DynamicsConfig(encoder="pixels", pool=8, project_dim=16, head="keypoints")
    with pytest.raises(ValueError, match="head must be 'mlp' or 'keypoints', got 'cnn'"):
        DynamicsConfig(head="cnn")


def test_the_build_skips_pretraining_for_a_model_that_trains_its_own_encoder(tiny_dataset, tmp_path, monkeypatch):
    from experiments import build_default_model

    monkeypatch.setattr(build_default_model, "EXPORT_ROOT", tmp_path / "models")
    target = build_default_model.main([*dataset_args(tiny_dataset), "dynamics.encoder=pixels", "dynamics.pool=8",
                                       "dynamics.project_dim=0", "dynamics.latent_dim=8", "dynamics.head_hidden=32",
                                       "dynamics.hidden=32", "dynamics.depth=1", "train.steps=4", "train.batch_size=8",
                                       "train.rollout_steps=1", "train.log_every=2", "train.progress=false",
                                       f"out_dir={tmp_path}/run", f"feature_cache={tmp_path}/cache", "slow=false",
                                       "policy=false", "distill=false"])
    assert target == tmp_path / "models" / "reacher"
    model = WorldModel.from_pretrained(target)
    assert type(model.encoder).__name__ == "PixelFrames"
    provenance = load_config(target)["provenance"]
    assert "pretrain_summary" not in provenance and provenance["dynamics_summary"]
    assert not (tmp_path / "run" / "checkpoint" / "config.json").exists() or \
        load_config(tmp_path / "run" / "checkpoint")["dynamics"]["encoder"] == "pixels"  # no ViT was pretrained there


def test_train_dynamics_resumes_and_its_conv_model_plans(tiny_dataset, tmp_path):
    data = dataset_args(tiny_dataset)
    train = [sys.executable, str(ROOT / "experiments" / "train_dynamics.py"), *data, "dynamics.encoder=conv",
             "dynamics.latent_dim=8", "dynamics.conv_width=8", "dynamics.head_hidden=32", "dynamics.hidden=32",
             "dynamics.depth=1", "train.batch_size=16", "train.rollout_steps=1", "train.log_every=5",
             "train.progress=false", f"out_dir={tmp_path}/run", f"feature_cache={tmp_path}/cache",
             f"hydra.run.dir={tmp_path}/h"]
    out = subprocess.run([*train, "train.steps=10"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    again = subprocess.run([*train, "train.steps=10"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "pass --resume" in again.stderr
    extend = [*train, "train.steps=20", "--resume", "resume_allow=[train.steps]"]  # a changed setting must be allowed
    out = subprocess.run(extend, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [row.split(",")[log[0].split(",").index("step")] for row in log[1:]] == ["5", "10", "15", "20"]
    model = WorldModel.from_pretrained(tmp_path / "run" / "checkpoint")
    assert type(model.encoder).__name__ == "ConvFrames" and model.image_shape == (3, 64, 64)
    plan = [sys.executable, str(ROOT / "experiments" / "plan.py"), *data, f"model={tmp_path}/run/checkpoint",
            "episodes=1", "goal_offset=10", "budget=5", "mpc.cem.samples=10", "mpc.cem.elites=2",
            "mpc.cem.iterations=1", "videos=0", "baselines=[]", "hierarchy=false", "progress=false",
            f"output_dir={tmp_path}/out",
            f"hydra.run.dir={tmp_path}/h2"]
    out = subprocess.run(plan, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cem-mpc" in out.stdout


def test_train_dynamics_on_a_pretrained_encoder_shares_the_feature_cache_across_seeds(tiny_dataset, tmp_path):
    from tests.models import tiny_jepa, tiny_jepa_train
    from worldmodel.jepa import PretrainObjective

    pre = tiny_jepa_train(steps=2, log_every=1)
    Trainer(PretrainObjective(tiny_jepa(), pre, tiny_dataset.split("train")), pre, tmp_path / "pre").run()
    cmd = [sys.executable, str(ROOT / "experiments" / "train_dynamics.py"), *dataset_args(tiny_dataset),
           f"encoder_checkpoint={tmp_path}/pre/checkpoint", "dynamics.pool=2",
           "dynamics.project_dim=8", "dynamics.latent_dim=4", "dynamics.head_hidden=16", "dynamics.hidden=32",
           "train.batch_size=16", "train.rollout_steps=1", "train.steps=4", "train.log_every=2", "train.progress=false",
           f"feature_cache={tmp_path}/cache"]
    runs = {}
    for seed in (0, 1):
        out = subprocess.run([*cmd, f"train.seed={seed}", f"out_dir={tmp_path}/s{seed}", f"hydra.run.dir={tmp_path}/h{seed}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[seed] = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    # one projection and two feature tables (train, val), written by the first run and only read by the second
    files = sorted(n.split("-")[0] for n in runs[0] if not n.endswith(".sha256"))  # each with its checksum record
    assert files == ["features", "features", "projection"] and len(runs[0]) == 6 and runs[1] == runs[0]
    a, b = (WorldModel.from_pretrained(tmp_path / f"s{seed}" / "checkpoint") for seed in (0, 1))
    assert torch.equal(a.encoder.pca_components, b.encoder.pca_components)
    assert not torch.equal(a.predictor.net[0].weight, b.predictor.net[0].weight)  # other initial weights
    config = load_config(tmp_path / "s0" / "checkpoint")
    assert config["encoder_checkpoint"] == f"{tmp_path}/pre/checkpoint" and config["train"]["seed"] == 0


def test_world_model_checkpoint_round_trip(tmp_path):
    model = tiny_world_model(moving=True)
    model.save_pretrained(tmp_path / "wm")
    back = WorldModel.from_pretrained(tmp_path / "wm")
    s0, a = torch.randn(2, model.state_dim), torch.rand(2, 3, model.block_dim)
    assert torch.equal(back.rollout(s0, a), model.rollout(s0, a))
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)  # stored in fp16, loaded as fp32
    half = WorldModel.from_pretrained(tmp_path / "half")
    assert half.dtype == torch.float32 and load_weights(tmp_path / "half")["predictor.net.0.weight"].dtype == torch.float16
    torch.testing.assert_close(half.rollout(s0, a), model.rollout(s0, a), atol=1e-2, rtol=1e-2)
    (tmp_path / "wm" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        WorldModel.from_pretrained(tmp_path / "wm")


def test_format_1_checkpoints_of_the_flat_model_still_load(tmp_path):
    """Checkpoints written before the world model was composed of parts (one flat module: ``encoder.*``,
    ``pca_*``, ``latent_mean``, ``head.*``, ``f.*``) load into the composed model unchanged."""
    model = tiny_world_model(moving=True, project_dim=8, latent_dim=4, head_hidden=16)
    torch.nn.init.normal_(model.encoder.pca_components)
    renames = [("encoder.vit.", "encoder."), ("encoder.pca_", "pca_"), ("encoder.feature_mean", "latent_mean"),
               ("encoder.feature_std", "latent_std"), ("encoder.head.", "head."),
               ("encoder.target_head.", "target_head."), ("predictor.net.", "f.")]
    old = {}
    for key, value in model.state_dict().items():
        new, old_prefix = next((n, o) for n, o in renames if key.startswith(n))
        old[old_prefix + key[len(new):]] = value
    config = {k: v for k, v in model.config().items() if k != "format"}
    save_checkpoint(tmp_path / "v1", config, old)
    back = WorldModel.from_pretrained(tmp_path / "v1")
    obs = torch.randint(0, 256, (3, 2, 3, 64, 64), dtype=torch.uint8)
    a = torch.rand(3, 2, 2)
    assert torch.equal(back.encode(obs, a), model.encode(obs, a))
    save_checkpoint(tmp_path / "bad", config, {**old, "mystery.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown weight 'mystery.weight'"):
        WorldModel.from_pretrained(tmp_path / "bad")
    assert load_config(tmp_path / "v1").get("format") is None


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
    path = tmp_path_factory.mktemp("wm") / "model"
    tiny_world_model(block=5).save_pretrained(path)
    return path


def test_plan_runs_end_to_end_with_a_world_model(tiny_dataset, tiny_model_dir, tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "plan.py"), *dataset_args(tiny_dataset),
           f"model={tiny_model_dir}", "episodes=2", "goal_offset=10", "budget=10", "mpc.cem.samples=20",
           "mpc.cem.elites=4", "mpc.cem.iterations=2", "videos=1", "progress=false", "hierarchy=false",
           f"output_dir={tmp_path}/out",
           f"hydra.run.dir={tmp_path}/h"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("plan-reacher-*.json")
    summary = json.loads(result.read_text())
    assert [r["agent"] for r in summary["results"]] == ["cem-mpc", "random", "zero"]
    assert summary["results"][0]["replans"] == 4 and summary["results"][0]["mean_plan_ms"] > 0
    threshold = summary["protocol"]["success_threshold"]
    for r in summary["results"]:  # every task's outcome is kept, and agrees with the summary
        assert len(r["tasks"]) == 2 and sum(t["success"] for t in r["tasks"]) == r["successes"]
        for t in r["tasks"]:  # a task succeeds exactly when its closest approach is within the tolerance
            assert t["success"] == (t["best_goal_error"] <= threshold)
            assert t["success"] or (t["steps"] == 10 and t["final_goal_error"] > threshold)
    (video,) = summary["videos"]
    assert Path(video).stat().st_size > 0
    assert "joint error" in out.stdout and "rad" in out.stdout  # the env's own error label and unit


def test_projection_keeps_the_top_principal_components(tiny_dataset):
    model = tiny_world_model(project_dim=8)
    model.encoder.fit_projection(tiny_dataset.split("train"), frames=126)
    obs = torch.from_numpy(np.array(tiny_dataset.split("train").obs[:126])).permute(0, 3, 1, 2)
    pooled, features = model.encoder.pooled(obs), model.encoder.features(obs)
    assert features.shape == (126, 8)
    centred = pooled - pooled.mean(0)
    top = torch.linalg.svdvals(centred)[:8] ** 2
    # the projection captures (almost) the variance of the top 8 components, in decreasing order
    var = (features**2).sum(0)
    assert torch.allclose(var, top, rtol=0.05)
    assert model.latent_dim == 8 and model.state_dim == 2 * 8 + 2 * 2  # two latents and one block of 2 actions


def test_global_standardisation_keeps_relative_variances():
    model = tiny_world_model(standardize="global")
    dim = model.encoder.feature_dim
    raw = torch.randn(500, dim) * torch.linspace(0.1, 3.0, dim)
    model.encoder.set_statistics(raw)
    z = model.encoder.latents(raw)  # no head: the standardised features
    var = z.var(0)
    assert var.mean().item() == pytest.approx(1.0, rel=0.01)
    assert var[-1] / var[0] > 100  # the large components stay large
    with pytest.raises(ValueError, match="standardize"):
        DynamicsConfig(standardize="minmax")


def test_the_shipped_model_plans_better_than_random_on_fresh_tasks(tmp_path):
    """Planning test: the shipped model against random torques on the same 40 distinct tasks of 40 fresh
    held-out episodes (goal 10 steps ahead, 20 steps of budget). The planner's closest approach to the
    goal must be the better one on at least 27 tasks (one-sided sign test: p = 0.019 if neither policy
    were better).

    (A predictor trained here for 1500 steps on 300 short episodes, on the shipped encoder, was
    dropped from this test: it won 27/40 on one draw of tasks and 18/40 on another, i.e. it is
    not reliably better than random; its learning is tested above by prediction error.)"""
    from math import comb

    from envs import EnvConfig
    from worldmodel.data import build_dataset, open_dataset
    from worldmodel.evaluation import RandomAgent

    from .conftest import tiny_collect_config

    assert sum(comb(40, k) for k in range(27, 41)) / 2**40 < 0.02
    shipped = WorldModel.from_pretrained(ROOT / "models" / "reacher")
    size = shipped.image_shape[-1]
    cfg = tiny_collect_config(tmp_path, env=EnvConfig(episode_steps=50, image_size=size), heldout_episodes=40,
                              eval_seed=4242)
    data = open_dataset(build_dataset(cfg, splits=("heldout",), progress=False))
    spec = envs.get_spec("reacher")
    tasks = sample_goal_tasks(data.split("heldout"), spec, 40, 10, np.random.default_rng(0))
    env = envs.make_env("reacher", max_episode_steps=20, image_size=size)
    random = RandomAgent(env.action_space, np.random.default_rng(1))
    _, flailed = evaluate_agent(env, spec, tasks, random, budget=20, progress=False, seed=1)
    mpc = MPCConfig(horizon=3, receding_horizon=5, cem=CEMConfig(samples=100, elites=10, iterations=5))
    planner = LatentMPCAgent(shipped, mpc, env.action_space.low, env.action_space.high, torch.Generator())
    _, planned = evaluate_agent(env, spec, tasks, planner, budget=20, progress=False, seed=0)
    env.close()
    better = sum(p.best_goal_error < r.best_goal_error for p, r in zip(planned, flailed))
    print("better than random on 40 tasks:", better)
    assert better >= 27, better


def test_training_validation_and_probes_run_in_the_dtype_of_the_model(tiny_dataset, tmp_path):
    """float64 stands in for another device: batches, losses, EMA and rollouts follow the model."""
    from worldmodel.evaluation import rollout_probes
    from worldmodel.probes import LinearProbe, Targets

    model = tiny_world_model(moving=True, latent_dim=4, head_hidden=16).double()
    tables = prepared(model, tiny_dataset)
    cfg = DynamicsTrainConfig(steps=3, batch_size=8, warmup_steps=1, log_every=3, rollout_steps=2, progress=False,
                              val_windows=16)
    batches = {s: WindowBatches(model, tiny_dataset.split(s), tables[s], cfg.rollout_steps) for s in tables}
    log = Trainer(DynamicsObjective(model, cfg, batches["train"], batches["val"]), cfg, tmp_path).run()
    assert np.isfinite(log[-1]["loss"]) and all(p.dtype == torch.float64 for p in model.parameters())
    test = tiny_dataset.split("heldout")
    targets = Targets.of(envs.get_spec("reacher"), test, ["joint_angles"])
    states = np.random.default_rng(0).normal(size=(50, model.state_dim))
    probe = LinearProbe().fit(states, np.random.default_rng(1).normal(size=(50, len(targets.columns))))
    out = rollout_probes(model, {"linear": probe}, targets, test, model.encoder.feature_table(test, progress=False),
                         horizon=2)
    assert len(out["latent_mse"]) == 3 and np.isfinite(out["latent_mse"]).all()


def test_dynamics_training_resumes_exactly_with_dropout(tiny_dataset, tmp_path):
    """Killed after step 6 and resumed, a run with predictor dropout (global generator draws) ends
    with the same weights as an uninterrupted one."""
    def trainer(out):
        model = tiny_world_model(latent_dim=4, head_hidden=16, dropout=0.3)
        tables = prepared(model, tiny_dataset)
        cfg = DynamicsTrainConfig(steps=12, batch_size=16, warmup_steps=2, log_every=3, checkpoint_every=3,
                                  rollout_steps=2, val_windows=32, progress=False)
        batches = {s: WindowBatches(model, tiny_dataset.split(s), tables[s], cfg.rollout_steps) for s in tables}
        return Trainer(DynamicsObjective(model, cfg, batches["train"], batches["val"]), cfg, out)

    full = trainer(tmp_path / "full")
    full.run()
    trainer(tmp_path / "cut").run(until=6)
    resumed = trainer(tmp_path / "cut")  # the global generator is back at its state after initialisation
    assert resumed.resume() and resumed.step == 6
    resumed.run()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in resumed.log_rows] == [r["loss"] for r in full.log_rows]
