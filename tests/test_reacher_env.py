import gymnasium
import numpy as np
import pytest

import envs
from envs.reacher import GYM_ID, reacher_success


@pytest.fixture
def env():
    e = envs.make_env("reacher", image_size=64)
    yield e
    e.close()


def test_gymnasium_make_gives_pixel_observations():
    e = gymnasium.make(GYM_ID)
    obs, info = e.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == (64, 64, 3)
    assert e.observation_space.contains(obs)
    assert set(envs.get_spec("reacher").physics_keys) <= set(info)
    e.close()


def test_image_size_is_configurable():
    e = envs.make_env("reacher", image_size=96)
    obs, _ = e.reset(seed=0)
    assert obs.shape == (96, 96, 3)
    e.close()


def test_arm_and_target_are_visible(env):
    obs, _ = env.reset(seed=3)
    r, g, b = (obs[..., i].astype(int) for i in range(3))
    red = (r > g + 40) & (r > b + 40)
    blue = (b > r + 30) & (g > r)
    assert red.sum() >= 9, "the target should cover a visible disk"
    assert blue.sum() >= 30, "the arm links should be clearly visible"


def test_set_state_reproduces_recorded_image(env):
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    recorded = []
    for _ in range(15):
        obs, *_ , info = env.step(rng.uniform(-1, 1, 2))
        recorded.append((obs.copy(), env.unwrapped.get_state()))
    env.reset(seed=99)  # somewhere else entirely
    for obs, state in recorded[::-1]:
        env.unwrapped.set_state(state)
        assert np.array_equal(env.unwrapped.render(), obs)
        assert np.array_equal(env.unwrapped.get_state(), state)


def test_set_state_then_same_actions_reproduces_the_trajectory(env):
    env.reset(seed=2)
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (20, 2))
    for a in actions[:5]:
        env.step(a)
    start = env.unwrapped.get_state()
    first = [env.step(a)[0] for a in actions[5:]]
    env.reset(seed=5)
    env.unwrapped.set_state(start)
    again = [env.step(a)[0] for a in actions[5:]]
    diffs = [np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(first, again)]
    assert max(diffs) == 0


def test_physics_match_the_stock_reacher():
    """Enlarging the drawn target must not change the dynamics of Reacher-v5."""
    ours, stock = envs.make_env("reacher"), gymnasium.make("Reacher-v5")
    ours.reset(seed=7)
    stock.reset(seed=7)
    rng = np.random.default_rng(2)
    for _ in range(40):
        a = rng.uniform(-1, 1, 2)
        ours.step(a)
        stock.step(a)
        np.testing.assert_array_equal(ours.unwrapped.data.qpos, stock.unwrapped.data.qpos)
        np.testing.assert_array_equal(ours.unwrapped.data.qvel, stock.unwrapped.data.qvel)
    ours.close()
    stock.close()


def test_info_holds_consistent_physical_quantities(env):
    env.reset(seed=4)
    for _ in range(10):
        *_, info = env.step(np.array([0.7, -0.4]))
    q0, q1 = info["joint_angles"]
    # Forward kinematics of Reacher-v5: links of 0.1 m and 0.11 m to the fingertip.
    tip = np.array([0.1 * np.cos(q0) + 0.11 * np.cos(q0 + q1), 0.1 * np.sin(q0) + 0.11 * np.sin(q0 + q1)])
    np.testing.assert_allclose(info["fingertip_xy"], tip, atol=1e-9)
    np.testing.assert_array_equal(info["target_xy"], env.unwrapped.data.qpos[2:4])
    np.testing.assert_array_equal(info["joint_velocities"], env.unwrapped.data.qvel[:2])
    np.testing.assert_array_equal(info["state"][:2], info["joint_angles"])


def test_success_handles_angle_wraparound():
    goal = np.array([np.pi - 0.01, 0.5, 0, 0, 0, 0, 0, 0])
    across = goal.copy()
    across[0] = -np.pi + 0.02  # 0.03 rad away through the wrap
    assert reacher_success(across, goal)
    shifted = goal.copy()
    shifted[0] += 4 * np.pi  # whole turns do not matter
    assert reacher_success(shifted, goal)
    off = goal.copy()
    off[1] += 0.06
    assert not reacher_success(off, goal)
    off[1] = goal[1] - 0.049
    assert reacher_success(off, goal)
    assert envs.get_spec("reacher").success(across, goal)


def test_bad_inputs_raise_clear_errors(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="action contains non-finite values"):
        env.unwrapped.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match=r"state must have shape \(8,\)"):
        env.unwrapped.set_state(np.zeros(5))
    with pytest.raises(ValueError, match="non-finite"):
        env.unwrapped.set_state(np.full(8, np.nan))
    with pytest.raises(envs.UnknownEnvError, match="unknown env 'pong'.*reacher"):
        envs.make_env("pong")
    with pytest.raises(ValueError, match="image_size"):
        envs.make_env("reacher", image_size=0)
