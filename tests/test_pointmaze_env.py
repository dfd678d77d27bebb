"""The point maze: the env contract (exact images from states, info, success), the cell grid
(BFS distances, shortest paths), the protocol's distance bins, and a tiny end-to-end run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs
from envs.pointmaze import (DISTANCE_BINS, bfs_distances, cell_centre, free_cells, layout_grid,
                            next_waypoint, sample_cell_pairs, shortest_path, xy_cell)
from planners.cem import CEMConfig
from planners.oracle import OracleAgent
from worldmodel.evaluation import ZeroAgent, run_task, sample_distance_tasks

ROOT = Path(__file__).resolve().parents[1]
SPEC = envs.get_spec("pointmaze")


@pytest.fixture(scope="module")
def env():
    e = envs.make_env("pointmaze", max_episode_steps=200)
    yield e
    e.close()


def test_observation_shows_the_ball_and_hides_the_goal_marker(env):
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert set(SPEC.physics_keys) <= set(info) and np.array_equal(info["state"][2:], [0, 0])
    # The ball (bright yellow) is visible at the default size: a few pixels where it is.
    yellow = (obs[..., 0] > 220) & (obs[..., 1] > 180) & (obs[..., 2] < 70)  # walls: (218, 157, 96)
    assert 4 <= yellow.sum() <= 60
    rows, cols = np.nonzero(yellow)
    walls = env.unwrapped.walls
    # The ball's pixels lie where its position projects (the camera frames the whole grid).
    px_per_cell = 64 / max(walls.shape)
    x, y = info["ball_xy"]
    col = (x + walls.shape[1] / 2) * px_per_cell + (64 - walls.shape[1] * px_per_cell) / 2
    row = (walls.shape[0] / 2 - y) * px_per_cell + (64 - walls.shape[0] * px_per_cell) / 2
    assert abs(cols.mean() - col) < 1.5 and abs(rows.mean() - row) < 1.5
    # Moving the goal target changes nothing in the image: the marker is hidden.
    sim = env.unwrapped._sim
    sim.goal = np.array([1.0, 1.0])
    sim.update_target_site_pos()
    assert np.array_equal(env.unwrapped.render(), obs)


def test_set_state_reproduces_the_image_exactly_in_a_fresh_env(env):
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    recorded = []
    for _ in range(15):
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, 2))
        recorded.append((info["state"], obs))
    other = envs.make_env("pointmaze")
    other.reset(seed=99)
    for state, obs in recorded:
        SPEC.set_state(other, state)
        assert np.array_equal(other.unwrapped.render(), obs)
        assert np.array_equal(SPEC.get_state(other), state)
    other.close()


def test_info_carries_position_velocity_and_cell(env):
    env.reset(seed=1, options={"cell": (3, 3)})
    _, _, _, _, info = env.step(np.array([1.0, 0.0]))
    assert info["ball_velocity"][0] > 0 and info["ball_velocity"][1] == pytest.approx(0)
    assert tuple(info["maze_cell"]) == xy_cell(env.unwrapped.walls, info["ball_xy"])
    assert np.array_equal(info["ball_xy"], info["state"][:2])
    assert [q.key for q in SPEC.quantities] == ["ball_xy", "ball_velocity", "maze_cell"]


def test_walls_block_the_ball(env):
    walls = env.unwrapped.walls
    env.reset(seed=0, options={"cell": (1, 1)})  # the wall cell (0, 1) is right above
    for _ in range(40):
        _, _, _, _, info = env.step(np.array([0.0, 1.0]))
    assert info["maze_cell"][0] == 1 and info["ball_xy"][1] < cell_centre(walls, (0, 1))[1] - 0.5


def test_success_is_within_0_45_units():
    goal = np.array([1.0, 2.0, 0.0, 0.0])
    assert SPEC.success(np.array([1.3, 2.3, 4.0, 0.0]), goal)  # 0.42 away, moving: still a success
    assert not SPEC.success(np.array([1.33, 2.33, 0.0, 0.0]), goal)  # 0.467 away
    assert SPEC.goal_error(np.array([4.0, 6.0, 0, 0]), np.array([1.0, 2.0, 0, 0])) == pytest.approx(5.0)


def test_bfs_distances_on_a_hand_checked_grid():
    walls = np.array([[1, 1, 1, 1, 1],
                      [1, 0, 1, 0, 1],
                      [1, 0, 0, 0, 1],
                      [1, 1, 1, 1, 1]], dtype=bool)
    d = bfs_distances(walls, (1, 1))
    assert d[1, 3] == 4 and d[2, 2] == 2 and d[0, 0] == -1  # around the wall, not through it
    assert shortest_path(walls, (1, 1), (1, 3)) == [(1, 1), (2, 1), (2, 2), (2, 3), (1, 3)]
    with pytest.raises(ValueError, match="wall"):
        bfs_distances(walls, (0, 0))


def test_the_medium_maze_distances_and_bins():
    walls = layout_grid("medium")
    cells = free_cells(walls)
    assert len(cells) == 26
    dist = np.array([[bfs_distances(walls, a)[b] for b in cells] for a in cells])
    assert (dist == dist.T).all() and (dist[~np.eye(len(cells), dtype=bool)] > 0).all()  # connected, symmetric
    assert dist.max() == 11  # the farthest pair is 11 cells apart
    pairs = sample_cell_pairs(walls, DISTANCE_BINS, 50, np.random.default_rng(0))
    assert [p[0] for p in pairs] == ["near"] * 50 + ["mid"] * 50 + ["far"] * 50
    for name, a, b, d in pairs:
        lo, hi = DISTANCE_BINS[name]
        assert lo <= d <= hi and d == bfs_distances(walls, a)[b]
    assert len({(a, b) for _, a, b, _ in pairs}) == 150  # distinct
    with pytest.raises(ValueError, match="bin 'far'"):
        sample_cell_pairs(walls, {"far": (11, 11)}, 50, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown maze layout 'huge'"):
        layout_grid("huge")


def test_maze_tasks_start_and_end_at_rest_in_the_bins_cells(env):
    tasks = sample_distance_tasks(env, SPEC, {"near": (1, 3), "far": (7, 99)}, 3, {"near": 20, "far": 40},
                                  np.random.default_rng(0))
    walls = env.unwrapped.walls
    assert [t.group for t in tasks] == ["near"] * 3 + ["far"] * 3 and [t.budget for t in tasks] == [20] * 3 + [40] * 3
    for t in tasks:
        assert np.array_equal(t.start_state[2:], [0, 0]) and np.array_equal(t.goal_state[2:], [0, 0])
        d = bfs_distances(walls, xy_cell(walls, t.goal_state[:2]))[xy_cell(walls, t.start_state[:2])]
        assert d == t.info["cells"]
        SPEC.set_state(env, t.goal_state)
        assert np.array_equal(env.unwrapped.render(), t.goal_obs)  # the goal image is the goal state's
    with pytest.raises(ValueError, match="no budget for the bins \\['far'\\]"):
        sample_distance_tasks(env, SPEC, {"far": (7, 99)}, 1, {"near": 5}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="has no distance-binned tasks"):
        sample_distance_tasks(env, envs.get_spec("reacher"), {"far": (7, 99)}, 1, {"far": 5},
                              np.random.default_rng(0))


def test_waypoints_follow_the_shortest_path(env):
    walls = env.unwrapped.walls
    start, goal = (1, 1), (6, 6)
    path = shortest_path(walls, start, goal)
    state = np.concatenate([cell_centre(walls, start), [0, 0]])
    goal_state = np.concatenate([cell_centre(walls, goal), [0, 0]])
    assert np.allclose(next_waypoint(env, state, goal_state)[:2], cell_centre(walls, path[1]))
    beside = np.concatenate([cell_centre(walls, path[-2]), [0, 0]])
    assert np.array_equal(next_waypoint(env, beside, goal_state), goal_state)


@pytest.mark.slow
def test_the_oracle_reaches_a_far_goal_and_zero_does_not(env):
    import torch

    (task,) = sample_distance_tasks(env, SPEC, {"far": (9, 99)}, 1, {"far": 120}, np.random.default_rng(0))
    oracle = OracleAgent(env, SPEC, CEMConfig(samples=100, elites=10, iterations=3), horizon=8, receding_horizon=2,
                         generator=torch.Generator().manual_seed(0))
    result = run_task(env, SPEC, task, oracle, budget=120)
    assert result.success, result
    assert not run_task(env, SPEC, task, ZeroAgent(env.action_space), budget=120).success


@pytest.mark.slow
def test_plan_entry_point_runs_the_maze_protocol_end_to_end(tmp_path):
    """A tiny world model with a slow level through plan.py env=pointmaze: both planners, flat and
    hierarchical, the baselines, every bin; the hierarchical videos show the subgoal."""
    import torch

    from experiments.conf import load
    from tests.models import tiny_world_model
    from worldmodel.hierarchy import SlowConfig, SlowModel, save_atlas

    kwargs = load("plan", ["env=pointmaze"]).env.env_kwargs()
    model = tiny_world_model(block=2, moving=True)
    model.save_pretrained(tmp_path / "model", extra={"env": "pointmaze", "env_kwargs": kwargs})
    slow = SlowModel(model.layout, SlowConfig(chunk=2, macro_dim=2, hidden=16, layers=1))
    slow.save_pretrained(tmp_path / "model" / "slow")
    save_atlas(tmp_path / "model" / "slow", torch.randn(5, model.latent_dim),
               np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8))
    cmd = [sys.executable, str(ROOT / "experiments" / "plan.py"), "env=pointmaze", f"model={tmp_path}/model",
           "episodes=2", "planners=[cem,mppi]", "baselines=[random,zero]", "bins.near.budget=5", "bins.mid.budget=5",
           "bins.far.budget=5", "mpc.horizon=2", "mpc.receding_horizon=2", "mpc.cem.samples=8", "mpc.cem.elites=2",
           "mpc.cem.iterations=1", "mpc.mppi.samples=8", "mpc.mppi.iterations=1", "slow.horizon=2", "slow.subgoal=1",
           "slow.cem.samples=8", "slow.cem.elites=2", "slow.cem.iterations=1", "slow.mppi.samples=8",
           "slow.mppi.iterations=1", "videos=1", "progress=false",
           f"output_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/hydra"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (result,) = (tmp_path / "results").glob("plan-pointmaze-*.json")
    summary = json.loads(result.read_text())
    assert summary["protocol"]["name"] == "maze" and summary["protocol"]["env_settings"]["maze"] == "medium"
    assert [r["agent"] for r in summary["results"]] == ["cem-mpc", "cem-hier", "mppi-mpc", "mppi-hier", "random",
                                                        "zero"]
    assert all(r["replans"] > 0 and r["gflops_per_step"] > 0 for r in summary["results"][:4])
    assert len(summary["videos"]) == 12 and any("-far-task4-" in v for v in summary["videos"])  # 1 per bin, planner
    from PIL import Image

    widths = {Path(v).name.split("-")[1] + "-" + Path(v).name.split("-")[2]: Image.open(v).width
              for v in summary["videos"]}
    assert widths["cem-hier"] > widths["cem-mpc"]  # now | subgoal | goal, against now | goal
    for r in summary["results"]:
        assert list(r["groups"]) == ["near", "mid", "far"] and all(g["episodes"] == 2 for g in r["groups"].values())
        assert [t["group"] for t in r["tasks"]] == ["near"] * 2 + ["mid"] * 2 + ["far"] * 2
        assert all(t["steps"] <= 5 for t in r["tasks"])
    assert "near (1-3)" in out.stdout and "far (7-)" in out.stdout


def test_only_tasks_runs_a_task_again_exactly_as_in_the_whole_evaluation(tmp_path):
    from experiments import plan
    from experiments.conf import load

    common = ["env=pointmaze", "model=", "episodes=2", "baselines=[random]", "bins.near.budget=6",
              "bins.mid.budget=6", "bins.far.budget=6", "progress=false"]
    whole = plan.run(load("plan", [*common, f"output_dir={tmp_path}/a"]))["results"][0]["tasks"]
    again = plan.run(load("plan", [*common, "only_tasks=[3,5]", f"output_dir={tmp_path}/b"]))["results"][0]["tasks"]
    assert again == [whole[3], whole[5]]
    with pytest.raises(ValueError, match="only_tasks=\\[6\\]: the draw has tasks 0..5"):
        plan.run(load("plan", [*common, "only_tasks=[6]", f"output_dir={tmp_path}/c"]))
