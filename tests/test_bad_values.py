"""Bad inputs and faults, values: numbers that are not numbers, and inputs outside the contract."""


import numpy as np
import pytest
import torch

from experiments.conf import load
from planners import CEM, MPPI, Bounds, CEMConfig, GradientConfig, GradientPlanner, MPPIConfig, NonFiniteCost
from planners.mpc import LatentMPCAgent, MPCConfig
from tests.models import tiny_world_model
from worldmodel.jepa import EncoderConfig, ViTEncoder
from worldmodel.training import OptimConfig, resolve_device



@pytest.fixture(scope="module")
def model():
    return tiny_world_model(block=2)


# --- numbers that are not numbers --------------------------------------------------------------------

def states_and_actions(model, n=3):
    obs = torch.randint(0, 255, (n, 3, 64, 64), dtype=torch.uint8)
    s = model.encode(obs)
    return s, torch.zeros(n, 4, model.block_dim)


@pytest.mark.parametrize("where", ["s0", "actions"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_rollout_refuses_non_finite_inputs_naming_them(model, where, value):
    s, a = states_and_actions(model)
    (s if where == "s0" else a)[1, 0, ...] = value
    n = 1 if where == "s0" else model.block_dim
    with pytest.raises(ValueError, match=f"{where} holds {n} non-finite values"):
        model.rollout(s, a)


def test_predict_and_encode_refuse_non_finite_inputs(model):
    s, a = states_and_actions(model)
    s[0, 0] = float("nan")
    with pytest.raises(ValueError, match="s holds 1 non-finite"):
        model.predict(s, a[:, 0])
    frames = torch.zeros(2, 2, 3, 64, 64, dtype=torch.uint8)
    actions = torch.full((2, model.layout.span, 2), float("nan"))
    with pytest.raises(ValueError, match="actions holds 8 non-finite"):
        model.encode(frames, actions)


def test_predict_and_rollout_refuse_mismatched_batches(model):
    s, a = states_and_actions(model)
    with pytest.raises(ValueError, match=r"predict needs one action block per state: s \(3, \d+\) and a \(2, \d+\)"):
        model.predict(s, a[:2, 0])
    with pytest.raises(ValueError, match=r"actions must be \(B, H, \d+\) for s0 \(3, \d+\), got \(2, 4, \d+\)"):
        model.rollout(s, a[:2])


def test_a_checkpoint_of_another_kind_given_as_a_world_model_is_named(model, tmp_path):
    from worldmodel.checkpoint import CheckpointError, save_checkpoint
    from worldmodel.dynamics import WorldModel

    save_checkpoint(tmp_path / "slow", {"kind": "slow", "format": 1}, {"w": torch.zeros(1)})
    save_checkpoint(tmp_path / "jepa", {"model": {"encoder": {}}}, {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"slow is a 'slow' checkpoint, not a world model"):
        WorldModel.from_pretrained(tmp_path / "slow")
    with pytest.raises(CheckpointError, match=r"jepa is a JEPA pretraining checkpoint, not a world model"):
        WorldModel.from_pretrained(tmp_path / "jepa")


def test_config_sizes_beyond_the_weights_are_refused_before_anything_is_allocated(model, tmp_path):
    import json

    from worldmodel.checkpoint import CheckpointError
    from worldmodel.dynamics import WorldModel

    path = model.save_pretrained(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["dynamics"]["hidden"] = 10**7  # a 4 TB predictor if it were built
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"the sizes in config.json do not fit the weights .*predictor"):
        WorldModel.from_pretrained(path)


@pytest.mark.parametrize("planner", [
    CEM(CEMConfig(samples=20, elites=4, iterations=2), 3, Bounds([-1.0], [1.0])),
    MPPI(MPPIConfig(samples=20, iterations=2), 3, Bounds([-1.0], [1.0])),
    GradientPlanner(GradientConfig(restarts=2, steps=2), 3, Bounds([-1.0], [1.0])),
], ids=["cem", "mppi", "gradient"])
def test_planners_raise_when_every_cost_is_not_finite(planner):
    nan_cost = lambda a: (a.sum((-1, -2)) * float("nan"))  # noqa: E731
    with torch.enable_grad():
        with pytest.raises(NonFiniteCost, match=r"every candidate's cost was NaN or inf for problems \[0, 1\]"):
            planner.plan(nan_cost, 2, torch.Generator().manual_seed(0))


def test_cem_plans_around_candidates_whose_cost_is_nan():
    def cost(a):  # NaN for candidates that push negative; otherwise distance to 0.5
        c = (a - 0.5).pow(2).sum((-1, -2))
        return torch.where(a[..., 0, 0] < 0, torch.full_like(c, float("nan")), c)

    cem = CEM(CEMConfig(samples=50, elites=5, iterations=4), 2, Bounds([-1.0], [1.0]))
    result = cem.plan(cost, 1, torch.Generator().manual_seed(0))
    assert torch.isfinite(result.cost).all() and result.actions[0, 0, 0] >= 0


def test_frame_features_that_are_not_finite_stop_before_training(tiny_dataset):
    broken = tiny_world_model(block=2)
    with torch.no_grad():
        next(broken.encoder.vit.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="frame features hold .* non-finite values"):
        broken.encoder.feature_table(tiny_dataset.split("heldout"), progress=False)


# --- inputs outside the contract ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_images_that_are_not_uint8_are_refused(model, dtype):
    frames = torch.zeros(2, 3, 64, 64, dtype=dtype)
    with pytest.raises(ValueError, match=f"frames must be uint8 images .*got {dtype}"):
        model.encode(frames)
    vit = ViTEncoder(EncoderConfig(size="tiny"))
    with pytest.raises(ValueError, match=r"images must be uint8 \(0-255\), got"):
        vit(frames)


def test_normalised_float_images_need_the_explicit_convention():
    vit = ViTEncoder(EncoderConfig(size="tiny"))
    assert vit(torch.zeros(1, 3, 64, 64), normalized=True).shape == (1, 64, vit.width)
    with pytest.raises(ValueError, match="normalized=True takes float images"):
        vit(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), normalized=True)


def agent(model) -> LatentMPCAgent:
    cfg = MPCConfig(horizon=2, receding_horizon=2, cem=CEMConfig(samples=8, elites=2, iterations=1))
    return LatentMPCAgent(model, cfg, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), torch.Generator())


@pytest.mark.parametrize("image, match", [
    (np.full((64, 64, 3), np.nan), r"goal image must be an \(H, W, C\) uint8 numpy image, got float64"),
    (np.zeros((64, 64, 3), np.float32), "got float32"),
    (np.zeros((32, 32, 3), np.uint8), r"must have shape \(64, 64, 3\) for this model, got \(32, 32, 3\)"),
    (np.zeros((3, 64, 64), np.uint8), r"must have shape \(64, 64, 3\)"),
    (torch.zeros(64, 64, 3, dtype=torch.uint8), "numpy image"),
])
def test_a_bad_goal_image_is_refused_by_the_agent(model, image, match):
    with pytest.raises(ValueError, match=match):
        agent(model).reset(image)


def test_a_bad_observation_is_refused_by_the_agent(model):
    a = agent(model)
    a.reset(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="observation must be"):
        a.act(np.zeros((64, 64, 3), np.float64))


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "cuda:-1"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ValueError, match=f"got '{name}'"):
        resolve_device(name)
    with pytest.raises(ValueError, match="device must be one of"):
        load("plan", [f"device={name}"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(name):
    with pytest.raises(RuntimeError, match=f"device={name} was asked for, but torch sees no CUDA GPU"):
        resolve_device(name)


@pytest.mark.parametrize("config, overrides, match", [
    ("collect", ["data.seed=-1"], "data.seed and data.eval_seed must be >= 0"),
    ("plan", ["data.eval_seed=-5"], "data.seed and data.eval_seed must be >= 0"),
    ("plan", ["task_seed=-1"], "videos and task_seed must be >= 0"),
    ("plan", ["videos=-1"], "videos and task_seed must be >= 0"),
    ("plan", ["episodes=0"], "episodes and budget must be >= 1"),
    ("plan", ["goal_offset=500"], r"goal_offset must be in \[1, env.episode_steps=100\]"),
    ("plan", ["baselines=[random,best]"], "unknown baseline 'best'"),
    ("plan", ["mpc.planner=ilqr"], r"planner must be one of \['cem', 'gradient', 'icem', 'mppi', 'policy'\], got 'ilqr'"),
    ("plan", ["mpc.cem.elites=1"], "need 2 <= elites <= samples"),
    ("pretrain", ["env.image_size=60", "model.encoder.image_size=60"], "multiple of the patch size"),
    ("collect", ["data.policy.name=correlated", "data.policy.beta=1.5"], r"policy.beta must be in \[0, 1\)"),
    ("pretrain", ["train.seed=-1"], "seed must be >= 0"),
    ("train_dynamics", ["projection_seed=-2"], "projection_seed must be >= 0"),
    ("probe", ["probe_seed=-1"], "probe_seed must be >= 0"),
    ("plan", ["task_seed=1180591620717411303424"], r"task_seed must be < 2\*\*63"),
    ("pretrain", ["train.seed=9223372036854775808"], r"seed must be >= 0 and < 2\*\*63"),
    ("train_dynamics", ["projection_seed=9223372036854775808"], r"projection_seed must be >= 0 and < 2\*\*63"),
    ("probe", ["event_step=9"], "event_step must be in"),
])
def test_config_values_are_checked_before_any_work(config, overrides, match):
    with pytest.raises(ValueError, match=match):
        load(config, overrides)


def test_an_unknown_env_is_refused_naming_the_known_ones():
    with pytest.raises(Exception, match="reacher"):
        load("plan", ["env.name=cheetah"])


def test_optim_config_refuses_bad_values():
    with pytest.raises(ValueError, match="min_lr <= lr"):
        OptimConfig(lr=1e-5, min_lr=1e-3)


def test_the_default_model_is_found_from_any_working_directory(tmp_path, monkeypatch):
    from experiments.schemas import PACKAGE_ROOT

    monkeypatch.chdir(tmp_path)  # no models/ here: the package's own shipped model
    assert load("plan", ["env=reacher"]).model == str(PACKAGE_ROOT / "models" / "reacher")
    (tmp_path / "models" / "reacher").mkdir(parents=True)  # a model rebuilt in this directory wins
    assert load("plan", ["env=reacher"]).model == "models/reacher"


def test_overlapping_distance_bins_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"distance bins near \(1-3\) and mid \(3-6\) overlap"):
        load("plan", ["env=pointmaze", "bins.mid.lo=3"])
    added = load("plan", ["env=pointmaze", "bins.far.hi=11", "+bins.huge={lo: 12, hi: 30, budget: 300}"]).bins
    assert [(k, b.lo, b.hi, b.budget) for k, b in added.items()] == [
        ("near", 1, 3, 50), ("mid", 4, 6, 70), ("far", 7, 11, 190), ("huge", 12, 30, 300)]
    with pytest.raises(ValueError, match=r"bins.huge=\{'lo': 12, 'depth': 3\} must be \{lo, hi, budget\}"):
        load("plan", ["env=pointmaze", "bins.far.hi=11", "+bins.huge={lo: 12, depth: 3}"])


def test_mpc_variants_are_added_key_by_key_from_the_command_line_and_bad_keys_are_named():
    variants = load("plan", ["+variants.c3.cem.samples=100", "+variants.c3.cem.iterations=3"]).variants
    (c3,) = variants.values()
    assert (c3.planner, c3.cem.samples, c3.cem.iterations, c3.cem.elites, c3.horizon) == ("cem", 100, 3, 30, 5)
    with pytest.raises(ValueError, match=r"variants.c3=\{'cem': \{'sample': 100\}\} is not MPC settings.*'sample'"):
        load("plan", ["+variants.c3.cem.sample=100"])
    with pytest.raises(ValueError, match=r"variants.c3=.*could not be converted to Integer"):
        load("plan", ["+variants.c3.cem.samples=many"])


def test_planning_out_of_order_names_the_call_and_the_fix():
    model = tiny_world_model(block=5)
    agent = LatentMPCAgent(model, MPCConfig(cem=CEMConfig(samples=8, elites=2, iterations=1)), np.array([-1.0, -1.0]),
                           np.array([1.0, 1.0]), torch.Generator())
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(RuntimeError, match=r"no goal: call reset\(goal_obs\) or set_goal\(latents\) before act"):
        agent.act(image)
    with pytest.raises(RuntimeError, match=r"latent-mpc.replan\(\) before a goal: call reset\(goal_obs\)"):
        agent.replan()
    agent.reset(image)
    with pytest.raises(RuntimeError, match=r"latent-mpc.replan\(\) before an observation: call act\(obs\)"):
        agent.replan()
    assert agent.act(image).shape == (2,)


def test_slow_level_sizes_beyond_its_weights_are_refused_before_anything_is_allocated(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from worldmodel.checkpoint import CheckpointError
    from worldmodel.hierarchy import SlowModel

    path = Path(shutil.copytree(Path(__file__).parents[1] / "models" / "reacher" / "slow", tmp_path / "slow"))
    assert SlowModel.from_pretrained(path).state_dim > 0
    config = json.loads((path / "config.json").read_text())
    config["slow"]["hidden"] = 10**7
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"the sizes in config.json do not fit the weights"):
        SlowModel.from_pretrained(path)


@pytest.mark.parametrize("name", ["reacher", "pointmaze", "dmc_reacher"])
def test_every_env_refuses_a_nan_action_and_writes_no_log(name, tmp_path, monkeypatch):
    import envs

    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory when it warns
    env = envs.make_env(name)
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.full(env.action_space.shape, np.nan, dtype=np.float32))
    finally:
        env.close()
    assert list(tmp_path.iterdir()) == []
