"""Push-T on gym-pusht: the env contract (exact images from states, relative actions, info, the peers'
success test), headless rendering, and the scripted expert that collects its data."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs
from envs.pusht import ACTION_SCALE, pose_error
from worldmodel.data import collect_episodes, episode_seeds
from worldmodel.data.collect import policy_rng
from worldmodel.data.policies import ExpertPolicy, UniformPolicy

ROOT = Path(__file__).resolve().parents[1]
SPEC = envs.get_spec("pusht")


@pytest.fixture(scope="module")
def env():
    e = envs.make_env("pusht", image_size=64)
    yield e
    e.close()


def random_walk(env, seed: int, steps: int):
    """(state, image, n_contacts) after each of ``steps`` random actions from reset(seed)."""
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        obs, _, terminated, _, info = env.step(rng.uniform(-1, 1, 2))
        assert not terminated  # the protocol decides success, not gym-pusht's fixed goal zone
        out.append((info["state"], obs, info["n_contacts"]))
    return out


def test_reset_is_seeded_and_info_holds_the_declared_quantities(env):
    obs, info = env.reset(seed=5)
    again, info2 = env.reset(seed=5)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and np.array_equal(obs, again)
    assert np.array_equal(info["state"], info2["state"]) and info["state"].shape == (SPEC.state_dim,)
    for q in SPEC.quantities:
        assert np.shape(info[q.key]) == (q.dims,), q.key
    s = info["state"]
    assert np.array_equal(info["agent_xy"], s[:2]) and np.array_equal(info["block_xy"], s[2:4])
    assert info["block_angle"][0] == s[4] and 0 <= info["zone_coverage"][0] <= 1


def test_set_state_reproduces_every_recorded_image_exactly_in_a_fresh_env(env):
    recorded = [r for seed in (0, 1, 2) for r in random_walk(env, seed, 40)]
    assert any(contacts for _, _, contacts in recorded)  # the walk pushed the T: contact states are covered
    other = envs.make_env("pusht", image_size=64)
    other.reset(seed=99)
    for state, obs, _ in recorded:
        SPEC.set_state(other, state)
        assert np.array_equal(SPEC.get_state(other), state)
        assert np.array_equal(other.unwrapped.render(), obs)
    other.close()


def test_the_future_after_set_state_is_the_same_every_time(env):
    state = random_walk(env, 4, 30)[-1][0]
    actions = np.random.default_rng(1).uniform(-1, 1, (10, 2))
    futures = []
    for _ in range(2):
        SPEC.set_state(env, state)
        futures.append(np.stack([env.step(a)[4]["state"] for a in actions]))
    assert np.array_equal(*futures)


def test_an_action_moves_the_target_relative_to_the_agent_clipped_to_the_arena(env):
    env.reset(seed=0)
    SPEC.set_state(env, np.array([100.0, 100.0, 400.0, 400.0, 0.0, 0, 0, 0, 0, 0]))
    for _ in range(3):
        env.step(np.array([1.0, 0.0]))
    x, y = SPEC.get_state(env)[:2]
    assert 100 + ACTION_SCALE * 0.5 < x and abs(y - 100) < 1  # it went right, toward agent + 100 px each step
    for _ in range(30):
        env.step(np.array([-1.0, -1.0]))
    assert np.all(SPEC.get_state(env)[:2] >= -5)  # the target is clipped to [0, 512]: it does not leave


@pytest.mark.parametrize("bad", [np.array([np.nan, 0.0]), np.zeros(3)])
def test_bad_actions_and_states_are_refused(env, bad):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)
    with pytest.raises(ValueError, match=r"state must have shape \(10,\) = \[agent_x"):
        SPEC.set_state(env, np.zeros(4))


def test_success_is_the_peers_test_positions_within_20_px_and_the_angle_within_pi_over_9():
    goal = np.array([200.0, 200.0, 300.0, 300.0, 1.0, 0, 0, 0, 0, 0])
    near = goal + np.array([6.0, 0, 0, 6.0, 0.1, 50, 0, 0, 0, 0])  # velocities are not compared
    assert SPEC.success(near, goal) and pose_error(goal, goal) == 0
    assert not SPEC.success(goal + np.array([15.0, 0, 15.0, 0, 0, 0, 0, 0, 0, 0]), goal)  # norm 21.2 px
    assert not SPEC.success(goal + np.array([0, 0, 0, 0, math.pi / 8, 0, 0, 0, 0, 0]), goal)
    assert SPEC.success(goal + np.array([0, 0, 0, 0, 2 * math.pi, 0, 0, 0, 0, 0]), goal)  # modulo a turn


def test_it_renders_without_a_display():
    code = ("import envs, pygame; e = envs.make_env('pusht'); o, _ = e.reset(seed=0); "
            "assert o.shape == (96, 96, 3) and o.std() > 0; assert not pygame.display.get_init(); print('ok')")
    environ = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "SDL_VIDEODRIVER", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_the_surprise_tests_colour_event_changes_the_look_not_the_motion_and_is_undone(env):
    from worldmodel.evaluation.surprise import replay

    start = random_walk(env, 3, 5)[-1][0]
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 2))
    plain = replay(env, SPEC, start, actions)
    end = env.unwrapped.get_state()
    recoloured = replay(env, SPEC, start, actions, "colour", at=2)
    assert (plain[:3] == recoloured[:3]).all() and (plain[3:] != recoloured[3:]).any(axis=(1, 2, 3)).all()
    assert (env.unwrapped.get_state() == end).all()  # the same motion
    assert (replay(env, SPEC, start, actions) == plain).all()  # the colours came back


def block_moves(env, policy, episodes: int, steps: int = 60) -> tuple[int, float]:
    """Episodes whose T ends > 10 px or > 0.2 rad from its start, and the share of steps that move it."""
    moved, moving = 0, 0
    space = env.action_space
    for seed in range(episodes):
        _, info = env.reset(seed=seed)
        state = start = info["state"]
        rng = policy_rng(seed)
        if hasattr(policy, "start"):
            act = policy.start(rng, steps, space.low, space.high, SPEC)
        else:
            actions = iter(policy.sample(rng, steps, space.low, space.high))
            act = lambda s: next(actions)  # noqa: E731
        for _ in range(steps):
            nxt = env.step(act(state))[4]["state"]
            moving += np.linalg.norm(nxt[2:4] - state[2:4]) > 0.5 or abs(nxt[4] - state[4]) > 0.01
            state = nxt
        moved += np.linalg.norm(state[2:4] - start[2:4]) > 10 or abs(state[4] - start[4]) > 0.2
    return moved, moving / (episodes * steps)


def test_the_expert_moves_the_block_in_most_episodes_and_far_more_often_than_random_motion(env):
    expert_episodes, expert_share = block_moves(env, ExpertPolicy(uniform_fraction=0.0), 20)
    random_episodes, random_share = block_moves(env, UniformPolicy(), 20)
    assert expert_episodes >= 16 and expert_episodes > random_episodes, (expert_episodes, random_episodes)
    assert expert_share > 3 * random_share, (expert_share, random_share)


def test_expert_data_are_a_function_of_the_seeds_alone():
    """Closed loop, the expert acts on each env's own state: one env or two give the same episodes."""
    seeds = episode_seeds(7, 3)
    kw = dict(episode_steps=15, env_kwargs={"image_size": 32}, progress=False)
    one = collect_episodes("pusht", ExpertPolicy(uniform_fraction=0.0), seeds, num_envs=1, **kw)
    two = collect_episodes("pusht", ExpertPolicy(uniform_fraction=0.0), seeds, num_envs=2, **kw)
    assert np.array_equal(one.actions, two.actions) and np.array_equal(one.obs, two.obs)
    assert np.abs(np.diff(one.states[:, 2:4], axis=0)).max() > 0  # the block was pushed


def test_the_expert_policy_needs_an_env_with_an_expert():
    space = envs.make_env("reacher").action_space
    with pytest.raises(ValueError, match="env 'reacher' has no scripted expert"):
        ExpertPolicy(uniform_fraction=0.0).start(policy_rng(0), 5, space.low, space.high, envs.get_spec("reacher"))


def test_pose_coverage_counts_cells_bins_and_the_steps_that_move_the_t():
    from envs.pusht import pose_coverage

    still = np.tile([100.0, 100.0, 40.0, 40.0, 0.1, 0, 0, 0, 0, 0], (5, 1))  # never moves, one cell, one bin
    moving = still.copy()
    moving[:, 2] = [40.0, 80.0, 120.0, 120.0, 120.0]  # two steps that move it 40 px: three cells
    moving[:, 4] = [0.1, 0.1, 0.1, 0.1, 3.3]  # and a turn into another angle bin
    stats = pose_coverage(np.concatenate([still, moving]), np.array([0, 5]))
    assert (stats["position_cells_visited"], stats["angle_bins_visited"], stats["pose_cells_visited"]) == (3, 2, 4)
    assert stats["steps_moving_block"] == 3 / 8 and stats["episodes_moving_block"] == 0.5
    assert stats["position_cells"] == 14 * 14 and stats["pose_cells"] == 14 * 14 * 12


def test_plan_py_runs_on_pusht_with_a_tiny_model(tmp_path):
    """plan.py env=pusht end to end: held-out expert episodes collected, our CEM and the peers' CEM and
    the reference agents on the same tasks, goal offset and budget printed beside the numbers."""
    import json

    from tests.models import tiny_world_model

    model = tmp_path / "model"
    tiny_world_model(block=5, moving=True).save_pretrained(
        model, extra={"env": "pusht", "env_kwargs": {"image_size": 64, "antialias": True}})
    cmd = [sys.executable, str(ROOT / "experiments" / "plan.py"), "env=pusht", "env.image_size=64",
           "env.episode_steps=30", f"model={model}", f"data.root={tmp_path}/data", "data.heldout_episodes=2",
           "data.num_envs=1", "episodes=2", "goal_offset=10", "budget=10", "mpc.cem.samples=10",
           "mpc.cem.elites=2", "mpc.cem.iterations=1", "variants.peers.cem.samples=10", "variants.peers.cem.elites=2",
           "variants.peers.cem.iterations=2", "videos=1", "progress=false", f"output_dir={tmp_path}/out",
           f"hydra.run.dir={tmp_path}/h"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("plan-pusht-*.json")
    summary = json.loads(result.read_text())
    assert [r["agent"] for r in summary["results"]] == ["cem-mpc", "cem-peers", "random", "zero"]
    assert all(r["episodes"] == 2 for r in summary["results"])
    assert "goal 10 steps ahead, budget 10 steps" in out.stdout and "pose error" in out.stdout
    (dataset,) = [d for d in (tmp_path / "data").iterdir() if not d.name.startswith(".")]
    assert dataset.name.startswith("pusht-expert-64px-heldout2x30-")


def test_simulate_plays_what_step_plays_and_leaves_the_env_as_it_was(env):
    state = random_walk(env, 5, 30)[-1][0]
    actions = np.random.default_rng(2).uniform(-1, 1, (3, 12, 2))
    SPEC.set_state(env, state)
    simulated = SPEC.simulate(env, state, actions)
    assert simulated.shape == (3, 12, 10)
    assert np.array_equal(SPEC.get_state(env), state)
    for plan, states in zip(actions, simulated):
        SPEC.set_state(env, state)
        assert np.array_equal(np.stack([env.step(a)[4]["state"] for a in plan]), states)


@pytest.mark.slow
def test_the_simulator_oracle_pushes_the_t_to_a_goal_pose_the_zero_policy_does_not(env):
    import torch

    from planners.cem import CEMConfig
    from planners.oracle import OracleAgent
    from worldmodel.evaluation import GoalTask, ZeroAgent, run_task

    env.reset(seed=6)
    expert = SPEC.expert(np.random.default_rng(6))
    states = [SPEC.get_state(env)]
    for _ in range(15):
        states.append(env.step(expert(states[-1]))[4]["state"])
    assert np.linalg.norm(states[-1][2:4] - states[0][2:4]) > 10  # the T moved: the goal needs a push
    task = GoalTask(episode=0, start=0, start_state=states[0], goal_state=states[-1], goal_obs=np.zeros((64, 64, 3),
                    np.uint8))
    oracle = OracleAgent(env, SPEC, CEMConfig(samples=200, elites=20, iterations=5), horizon=20, receding_horizon=5,
                         generator=torch.Generator().manual_seed(0))  # envs/pusht.yaml's oracle
    result = run_task(env, SPEC, task, oracle, budget=30)
    assert result.success, result
    assert not run_task(env, SPEC, task, ZeroAgent(env.action_space), budget=30).success
