import gymnasium
import numpy as np
import pytest

import envs
from envs.dmc_reacher import GYM_ID, STATE_DIM

SPEC = envs.get_spec("dmc_reacher")


@pytest.fixture
def env():
    e = envs.make_env("dmc_reacher", image_size=64)
    yield e
    e.close()


def test_gymnasium_make_gives_pixel_observations_and_declared_info():
    e = gymnasium.make(GYM_ID)
    obs, info = e.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3)
    assert e.observation_space.contains(obs)
    assert set(SPEC.physics_keys) <= set(info) and info["state"].shape == (STATE_DIM,)
    obs, reward, terminated, truncated, info = e.step(e.action_space.sample())
    assert set(SPEC.physics_keys) <= set(info) and 0.0 <= reward <= 1.0 and not terminated
    e.close()


def test_arm_and_target_are_visible_from_camera_0(env):
    obs, _ = env.reset(seed=0)
    r, g, b = (obs[..., i].astype(int) for i in range(3))
    arm = (r > b + 60) & (g > b)  # the orange-yellow links on the blue floor
    target = (r > g + 40) & (r > b + 40)
    assert arm.sum() >= 30, "the arm links should be clearly visible"
    assert target.sum() >= 8, "the target should be visible"


def test_reset_with_a_seed_is_deterministic_and_draws_the_hard_target(env):
    o1, i1 = env.reset(seed=5)
    o2, i2 = env.reset(seed=5)
    o3, _ = env.reset(seed=6)
    assert np.array_equal(o1, o2) and np.array_equal(i1["state"], i2["state"]) and not np.array_equal(o1, o3)
    assert 0.05 <= np.linalg.norm(i1["target_xy"]) <= 0.20
    assert env.unwrapped.physics.named.model.geom_size["target", 0] == pytest.approx(0.015)


def test_set_state_reproduces_recorded_images_and_futures_exactly(env):
    env.reset(seed=2)
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (30, 2))
    states, frames = [], []
    for a in actions:
        obs, *_, info = env.step(a)
        states.append(info["state"])
        frames.append(obs)
    env.reset(seed=99)  # another pose and another target
    SPEC.set_state(env, states[9])
    assert np.array_equal(env.unwrapped.render(), frames[9])
    assert np.array_equal(SPEC.get_state(env), states[9])
    for t in range(10, 30):
        obs, *_, info = env.step(actions[t])
        assert np.array_equal(info["state"], states[t]) and np.array_equal(obs, frames[t])


def test_physics_match_dm_control_reacher_hard():
    """Our wrapper steps exactly dm_control's reacher-hard: same start from the same seed, same states."""
    from dm_control import suite

    ours = envs.make_env("dmc_reacher")
    stock = suite.load("reacher", "hard", task_kwargs={"random": np.random.RandomState(7)})
    ours.reset(seed=7)
    stock.reset()
    rng = np.random.default_rng(2)
    for _ in range(40):
        a = rng.uniform(-1, 1, 2)
        ours.step(a)
        step = stock.step(a)
        np.testing.assert_array_equal(ours.unwrapped.physics.data.qpos, stock.physics.data.qpos)
        np.testing.assert_array_equal(SPEC.get_state(ours)[2:4], stock.physics.named.model.geom_pos["target", :2])
    assert ours.unwrapped.step(np.zeros(2))[1] == pytest.approx(step.reward, abs=1.0)  # a reward in [0, 1]
    ours.close()


def test_success_is_the_joint_angle_test():
    goal = np.array([0.3, -1.0, 0.1, 0.1, 0.0, 0.0])
    assert SPEC.success(goal + np.array([0.049, -0.049, 0.05, 0, 3, 3]), goal)
    assert not SPEC.success(goal + np.array([0.051, 0, 0, 0, 0, 0]), goal)
    assert SPEC.success(goal + np.array([2 * np.pi, 0, 0, 0, 0, 0]), goal)  # modulo 2*pi


def test_bad_inputs_are_named(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        SPEC.set_state(env, np.zeros(8))
    with pytest.raises(ValueError, match="non-finite"):
        SPEC.set_state(env, np.array([0, 0, 0, 0, np.nan, 0]))
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="image_size"):
        envs.make_env("dmc_reacher", image_size=4)
